"""Correctness from public bug reports (issue 13, items 5, 6 and 14), each as the right value:

- every metric is computed over the competition's C classes, whatever classes a fold happens to hold
  (QWK's weights, F1/recall averages, the classification report), and the kit's two QWKs agree;
- kappa cut-points are judged honestly (fit on the other folds, scored on the held-out one) and fit on
  out-of-fold predictions made as the test predictions are (the TTA views, comp.predict.oof_tta);
- a two-class AUC submission holds P(positive class), whatever the order of the classes.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_experiment, write_tiny_competition
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config
from comp.metrics import METRICS, auc, classification_report, confusion, positive_index, score_all
from comp.predict import oof_tta, thresholds
from comp.predict.predict import predict_test
from comp.predict.submission import build, check, score_holdout, submission_probs, to_csv_text

# ---------------------------------------------------------------- 5: metrics over the competition's classes


def test_qwk_weights_span_every_grade_even_one_absent_from_the_fold():
    y = np.array([0, 0, 1, 1, 2, 2, 4, 4, 4, 0])  # grade 3 neither true nor predicted
    pred = np.array([0, 1, 1, 2, 2, 4, 4, 4, 2, 0])
    probs = np.eye(5)[pred]
    assert METRICS["qwk"](y, probs) == pytest.approx(0.7916666666666666, abs=1e-12)  # 0.8519 over grades {0,1,2,4}
    assert thresholds.qwk(y, pred, 5) == pytest.approx(0.7916666666666666, abs=1e-12)


@st.composite
def graded(draw):
    """Labels and predictions over C grades, each side drawn from its own random subset of the grades."""
    c = draw(st.integers(2, 7))
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y_grades = rng.choice(c, draw(st.integers(1, c)), replace=False)
    p_grades = rng.choice(c, draw(st.integers(1, c)), replace=False)
    return c, rng.choice(y_grades, n), rng.choice(p_grades, n)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(graded())
def test_both_kit_qwks_equal_scikit_learn_over_all_grades(case):
    c, y, pred = case
    want = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(c))
    kit = METRICS["qwk"](y, np.eye(c)[pred])
    fast = thresholds.qwk(y, pred, c)
    if np.isnan(want):  # one grade on both sides: undefined (the search's fast version scores it 0)
        assert np.isnan(kit) and fast == 0.0
    else:
        assert kit == pytest.approx(want, abs=1e-12) and fast == pytest.approx(want, abs=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.filterwarnings("ignore:.*(single label|not in y_true).*:UserWarning")
@settings(max_examples=40, deadline=None)
@given(graded())
def test_class_averages_follow_their_definitions_over_all_classes(case):
    """F1 of a class predicted but absent from the truth counts 0; a class neither true nor predicted has no
    F1 and no recall and is left out; the report's averages are the metrics' values."""
    c, y, pred = case
    probs = np.eye(c)[pred]
    s = score_all(y, probs)
    f1 = {k: 2 * tp / (2 * tp + fp + fn) for k in range(c)
          if (tp := np.sum((pred == k) & (y == k))) + (fp := np.sum((pred == k) & (y != k)))
          + (fn := np.sum((pred != k) & (y == k))) > 0}
    assert s["f1_macro"] == pytest.approx(np.mean(list(f1.values())), abs=1e-12)
    support = {k: np.sum(y == k) for k in f1}
    assert s["f1_weighted"] == pytest.approx(sum(f1[k] * support[k] for k in f1) / len(y), abs=1e-12)
    recalls = [np.mean(pred[y == k] == k) for k in np.unique(y)]
    assert s["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    names = [f"g{k}" for k in range(c)]
    rep = classification_report(y, pred, names)
    assert list(rep.index[:c]) == names
    assert rep.loc["macro avg", "f1-score"] == pytest.approx(s["f1_macro"], abs=1e-12)
    assert rep.loc["weighted avg", "f1-score"] == pytest.approx(s["f1_weighted"], abs=1e-12)
    assert rep.loc["macro avg", "recall"] == pytest.approx(s["balanced_accuracy"], abs=1e-12)
    assert confusion(y, pred, c).shape == (c, c) and confusion(y, pred, c).sum() == len(y)


def test_binary_auc_ranks_the_positive_class_by_its_own_column():
    y = np.array([0, 0, 1, 1, 0])
    # saturated softmax: P(class 1) rounds to 1.0 for two rows whose P(class 0) still differ
    p0 = np.array([1e-9, 1e-12, 1e-15, 0.4, 0.7])
    probs = np.stack([p0, np.float32(1) - p0.astype(np.float32)], 1).astype(np.float64)
    assert auc(y, probs, positive=0) == pytest.approx(skm.roc_auc_score(y == 0, probs[:, 0]), abs=1e-12)
    assert auc(y, probs, positive=1) == pytest.approx(skm.roc_auc_score(y == 1, probs[:, 1]), abs=1e-12)
    assert auc(y, probs, positive=0) != auc(y, probs, positive=1)  # the ties differ: the column matters


# ---------------------------------------------------------------- 6: honest, TTA-matched cut-points


def _noise(seed: int, n: int = 150, c: int = 5):
    rng = np.random.default_rng(seed)
    return rng.choice(c, n, p=[0.45, 0.1, 0.25, 0.1, 0.1]), rng.dirichlet(np.ones(c), n)


def test_cut_points_on_noise_gain_in_sample_but_not_honestly():
    """Probabilities unrelated to the grades: tuned cut-points 'gain' kappa on the rows they were fit on
    (what the kit used to report), while the cross-fitted gain is zero on average."""
    t = [thresholds.choose(*_noise(seed), np.arange(150) % 5) for seed in range(8)]
    in_sample, honest = np.mean([x["gain_in_sample"] for x in t]), np.mean([x["gain_honest"] for x in t])
    assert in_sample > 0.06 and abs(honest) < 0.03, (in_sample, honest)
    for x in t:
        assert (x["method"] == "cuts") == (x["gain_honest"] > 0 and x["gain_in_sample"] > 0)
        assert len(x["folds"]) == 5 and sum(f["n"] for f in x["folds"]) == 150


def test_honest_cut_points_never_see_the_held_out_labels():
    y, probs = _noise(3)
    folds = np.arange(150) % 3
    before = thresholds.cross_fit(y, probs, folds)
    y2 = y.copy()
    y2[folds == 1] = np.random.default_rng(9).integers(0, 5, np.sum(folds == 1))
    after = thresholds.cross_fit(y2, probs, folds)
    np.testing.assert_array_equal(before[folds == 1], after[folds == 1])  # fold 1 decoded without its labels
    assert not np.array_equal(before[folds != 1], after[folds != 1])  # the other folds did learn from them
    single = thresholds.choose(y, probs, np.zeros(150, int))  # one fold: no honest estimate, argmax
    assert single["method"] == "argmax" and single["gain_honest"] is None


def _oracle(ex: dict, k: int, *extra: str) -> np.ndarray:
    """Fold k's validation images predicted by predict_test with fold k's best.pt, as if they were the test
    set: the way test predictions are made."""
    split = pd.read_csv(ex["out"] / "folds.csv", dtype={"id": str})
    split.loc[split["fold"] == k, ["id"]].to_csv(ex["root"] / f"oracle{k}.csv", index=False)
    cfg = load_config(None, [*ex["overrides"], *extra, f"data.test_csv=oracle{k}.csv", "data.test_images=[train]"])
    return predict_test(cfg, load_competition(cfg), paths=[ex["out"] / f"fold{k}" / "best.pt"])


def test_tta_oof_is_each_fold_predicted_as_the_test_set_and_is_cached(tmp_path):
    ex = make_experiment(tmp_path, "metric=qwk", "aug.tta=[identity,hflip,vflip]")
    cfg, out = ex["cfg"], ex["out"]
    files = oof_tta.write_tta_oof(cfg)
    split = pd.read_csv(out / "folds.csv", dtype={"id": str})
    for k, path in enumerate(files):
        assert path == out / f"fold{k}" / "oof_tta.csv"
        got = pd.read_csv(path, dtype={"id": str})
        assert list(got.columns) == list(pd.read_csv(out / f"fold{k}" / "oof.csv").columns)  # oof.csv's format
        va = split[split["fold"] == k]
        assert list(got["id"]) == list(va["id"]) and list(got["label"]) == list(va["label"])
        np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), _oracle(ex, k), atol=1e-6)

    stamps = [p.stat().st_mtime_ns for p in files]
    oof_tta.write_tta_oof(cfg)
    assert [p.stat().st_mtime_ns for p in files] == stamps  # same checkpoints and settings: reused
    torch.save(torch.load(out / "fold0" / "best.pt", weights_only=True) | {"best": 0.9}, out / "fold1" / "best.pt")
    oof_tta.write_tta_oof(cfg)
    assert files[0].stat().st_mtime_ns == stamps[0] and files[1].stat().st_mtime_ns != stamps[1]  # fold1 only
    logit = load_config(None, [*ex["overrides"], "predict.ensemble=mean_logit"])
    oof_tta.write_tta_oof(logit)  # another setting: made again, and still the test-time average
    got = pd.read_csv(files[1], dtype={"id": str}).filter(like="prob_").to_numpy()
    np.testing.assert_allclose(got, _oracle(ex, 1, "predict.ensemble=mean_logit"), atol=1e-6)

    (out / "folds.csv").unlink()
    with pytest.raises(UserError, match="folds.csv is missing"):
        oof_tta.write_tta_oof(load_config(None, [*ex["overrides"], "aug.tta=[hflip]"]))


def test_thresholds_fit_on_the_tta_oof_and_store_both_gains(tmp_path):
    ex = make_experiment(tmp_path, "metric=qwk", "aug.tta=[identity,hflip]", n_folds=3)
    cfg, out = ex["cfg"], ex["out"]
    t = thresholds.fit_decoding(cfg, 3)
    saved = json.loads((out / "thresholds.json").read_text())
    assert t == saved and saved["source"] == "oof_tta"
    oof = pd.concat([pd.read_csv(out / f"fold{k}" / "oof_tta.csv").assign(fold=k) for k in range(3)])
    y, probs, folds = oof["label"].to_numpy(), oof.filter(like="prob_").to_numpy(), oof["fold"].to_numpy()
    want = thresholds.choose(y, probs, folds)  # fit on the TTA OOF, not on oof.csv
    for key in ("kappa_argmax", "kappa_tuned", "kappa_honest", "gain_in_sample", "gain_honest", "method"):
        assert saved[key] == pytest.approx(want[key], abs=1e-12), key
    honest = thresholds.cross_fit(y, probs, folds)
    for f in saved["folds"]:
        m = folds == f["fold"]
        base = thresholds.qwk(y[m], probs[m].argmax(1), 3)
        assert f["gain_honest"] == pytest.approx(thresholds.qwk(y[m], honest[m], 3) - base, abs=1e-12)
    assert (saved["method"] == "cuts") == (saved["gain_honest"] > 0 and saved["gain_in_sample"] > 0)

    mtime = (out / "thresholds.json").stat().st_mtime_ns
    (out / "fold0" / "oof.csv").write_text((out / "fold1" / "oof.csv").read_text())
    thresholds.fit_decoding(cfg, 3)
    assert (out / "thresholds.json").stat().st_mtime_ns == mtime  # the plain OOF is not what it was fit on
    plain = thresholds.fit_decoding(load_config(None, [*ex["overrides"], "aug.tta=[identity]"]), 3)
    assert plain["source"] == "oof"


# ---------------------------------------------------------------- 14: the positive class of an AUC submission


def test_positive_class_defaults_and_validation():
    assert positive_index("", ["0", "1"], [0, 1]) == 1
    assert positive_index("", ["malignant", "benign"], [1, 0]) == 0
    assert positive_index("", ["yes", "no"], ["True", "False"]) == 0
    assert positive_index("", ["NORMAL", "PNEUMONIA"], ["NORMAL", "PNEUMONIA"]) == 1  # no 1/True: the second
    assert positive_index("benign", ["malignant", "benign"], [1, 0]) == 1
    assert positive_index("0", ["malignant", "benign"], [1, 0]) == 1  # by value
    with pytest.raises(UserError, match="'data.positive_class': 'melanoma' is not one of the classes"):
        positive_index("melanoma", ["malignant", "benign"], [1, 0])
    with pytest.raises(UserError, match="'data.positive_class'"):
        load_config(None, ["data.classes=[malignant,benign]", "data.class_values=[1,0]", "data.positive_class=x"])


def _binary(tmp_path, *extra):
    """A two-class competition whose train/solution CSVs say 1 (malignant) and 0 (benign)."""
    root = write_tiny_competition(tmp_path / "data", classes=(1, 0))
    cfg = load_config(None, [f"data.root={root}", "data.source=competition", "data.solution_csv=solution.csv",
                             "metric=auc", *extra])
    comp = load_competition(cfg)
    truth = pd.read_csv(root / "solution.csv", dtype={"id": str}).set_index("id")["label"]
    malignant = (truth.loc[comp.test["id"]] == 1).to_numpy()
    return cfg, comp, truth, malignant


@pytest.mark.parametrize("order", [["malignant", "benign"], ["benign", "malignant"]])
def test_auc_submission_holds_the_positive_probability_whatever_the_class_order(tmp_path, order):
    values = [1 if c == "malignant" else 0 for c in order]
    cfg, comp, truth, malignant = _binary(tmp_path, f"data.classes=[{','.join(order)}]",
                                          f"data.class_values=[{','.join(map(str, values))}]")
    assert comp.classes == order
    p_mal = np.where(malignant, 0.8, 0.3) + np.linspace(0, 0.1, len(malignant))
    probs = np.zeros((len(p_mal), 2))
    probs[:, order.index("malignant")], probs[:, order.index("benign")] = p_mal, 1 - p_mal
    df = build(cfg, comp, probs)
    check(cfg, comp, df)
    sub = pd.read_csv(io.StringIO(to_csv_text(df)), dtype={"id": str}).set_index("id")["label"]
    np.testing.assert_allclose(sub.loc[comp.test["id"]].to_numpy(), p_mal, rtol=1e-12)  # P(malignant)
    # scored as Kaggle scores it: the solution's 1 is the positive class, the column its probability
    assert skm.roc_auc_score(truth.loc[sub.index] == 1, sub) == 1.0
    assert score_holdout(cfg, comp, df) == 1.0
    np.testing.assert_allclose(submission_probs(cfg, comp, df)[:, order.index("malignant")], sub.to_numpy())

    other = load_config(None, [*_overrides(cfg), "data.positive_class=benign"])
    flipped = pd.read_csv(io.StringIO(to_csv_text(build(other, comp, probs))), dtype={"id": str})
    np.testing.assert_allclose(flipped.set_index("id")["label"].loc[comp.test["id"]], 1 - p_mal, rtol=1e-12)


def _overrides(cfg) -> list[str]:
    return [f"data.root={cfg.data.root}", "data.source=competition", "data.solution_csv=solution.csv", "metric=auc",
            f"data.classes=[{','.join(cfg.data.classes)}]", f"data.class_values=[{','.join(cfg.data.class_values)}]"]


def test_a_positive_class_that_is_not_a_class_of_the_data_is_refused(tmp_path):
    cfg, comp, _, _ = _binary(tmp_path, "data.positive_class=2")  # classes inferred from the data: 0, 1
    with pytest.raises(UserError, match="'data.positive_class': '2' is not one of the classes"):
        build(cfg, comp, np.full((len(comp.test), 2), 0.5))
