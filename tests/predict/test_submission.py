"""The submission frame (comp.predict.submission) follows the sample submission: its header, its row order, its
id spelling and the competition's value encoding (integer grades, class names, one probability column per
class, or the positive-class probability for AUC, whatever the order of the classes)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from helpers import make_experiment, write_tiny_competition
from sklearn import metrics as skm

from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config
from comp.predict.submission import (
    build,
    check,
    make_submission,
    read_exact,
    score_holdout,
    submission_probs,
    to_csv_text,
)


def _setup(tmp_path, sample_columns=None, classes=(0, 1, 2), extra=()):
    """A tiny competition whose test ids are listed (test.csv) in another order than the sample
    submission's, so the frame has to reorder; returns (cfg, comp, probs in comp.test order)."""
    root = write_tiny_competition(tmp_path / "data", classes=classes)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    sample = sample.sample(frac=1, random_state=3).reset_index(drop=True)  # shuffled rows
    if sample_columns is not None:
        sample = pd.DataFrame({"id": sample["id"], **{c: "0.5" for c in sample_columns}})
    sample.to_csv(root / "sample_submission.csv", index=False)
    sample[["id"]].iloc[::-1].to_csv(root / "test.csv", index=False)
    cfg = load_config(None, [f"data.root={root}", "data.test_csv=test.csv", "data.solution_csv=solution.csv",
                             "data.source=competition", *extra])
    comp = load_competition(cfg)
    assert list(comp.test["id"]) != list(sample["id"])  # the frame must reorder
    probs = np.random.default_rng(0).dirichlet(np.ones(len(classes)), len(comp.test))
    return cfg, comp, probs, sample


def _reread(df: pd.DataFrame) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(to_csv_text(df)), dtype=str, keep_default_na=False)


def _by_id(comp, probs):
    return {i: p for i, p in zip(comp.test["id"], probs, strict=True)}


def test_integer_labels_follow_the_sample(tmp_path):
    cfg, comp, probs, sample = _setup(tmp_path)
    out = _reread(build(cfg, comp, probs))
    assert list(out.columns) == list(sample.columns)
    assert list(out["id"]) == list(sample["id"])
    by_id = _by_id(comp, probs)
    assert list(out["label"]) == [str(int(np.argmax(by_id[i]))) for i in out["id"]]
    labels = np.array([2] * len(comp.test))  # decoded labels (kappa cut-points) override the argmax
    assert set(_reread(build(cfg, comp, probs, labels))["label"]) == {"2"}
    check(cfg, comp, build(cfg, comp, probs))


def test_class_name_labels_follow_the_sample(tmp_path):
    cfg, comp, probs, sample = _setup(tmp_path, classes=("benign", "malignant", "normal"))
    out = _reread(build(cfg, comp, probs))
    assert list(out.columns) == ["id", "label"] and list(out["id"]) == list(sample["id"])
    by_id = _by_id(comp, probs)
    assert list(out["label"]) == [comp.classes[int(np.argmax(by_id[i]))] for i in out["id"]]
    check(cfg, comp, out)


@pytest.mark.parametrize("classes,columns", [((0, 1, 2), ["0", "1", "2"]),
                                             (("benign", "malignant", "normal"), ["normal", "benign", "malignant"])])
def test_probability_columns_follow_the_sample(tmp_path, classes, columns):
    cfg, comp, probs, sample = _setup(tmp_path, sample_columns=columns, classes=classes)
    out = _reread(build(cfg, comp, probs))
    assert list(out.columns) == ["id", *columns] and list(out["id"]) == list(sample["id"])
    by_id = _by_id(comp, probs)
    for col in columns:  # each column by its name, whatever the sample's column order
        c = [str(v) for v in comp.label_values].index(col)
        np.testing.assert_allclose(out[col].astype(float), [by_id[i][c] for i in out["id"]], rtol=1e-12)
    check(cfg, comp, out)
    with pytest.raises(UserError, match="predict.output=label"):
        build(load_config(None, [*_overrides(cfg), "predict.output=label"]), comp, probs)


def _overrides(cfg):
    return [f"data.root={cfg.data.root}", "data.test_csv=test.csv", "data.solution_csv=solution.csv",
            "data.source=competition"]


def test_binary_auc_submission_holds_the_positive_probability(tmp_path):
    cfg, comp, probs, sample = _setup(tmp_path, classes=(0, 1), extra=["metric=auc"])
    out = _reread(build(cfg, comp, probs))
    by_id = _by_id(comp, probs)
    assert list(out.columns) == ["id", "label"] and list(out["id"]) == list(sample["id"])
    np.testing.assert_allclose(out["label"].astype(float), [by_id[i][1] for i in out["id"]], rtol=1e-12)
    check(cfg, comp, out)
    labels = _reread(build(load_config(None, [*_overrides(cfg), "metric=auc", "predict.output=label"]), comp, probs))
    assert set(labels["label"]) <= {"0", "1"}


def test_make_submission_end_to_end_with_probability_columns(tmp_path):
    root = write_tiny_competition(tmp_path / "data")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    pd.DataFrame({"id": sample["id"], "0": 0, "1": 0, "2": 0}).to_csv(root / "sample_submission.csv", index=False)
    ex = make_experiment(tmp_path, root=root)
    sub = make_submission(ex["cfg"])
    df = pd.read_csv(io.StringIO(sub.text), dtype={"id": str})
    assert list(df.columns) == ["id", "0", "1", "2"] and list(df["id"]) == list(sample["id"])
    np.testing.assert_allclose(df[["0", "1", "2"]].to_numpy(), sub.probs, rtol=1e-6)
    assert sub.score is not None and 0 <= sub.score <= 1  # the held-out accuracy of the argmax


def test_read_exact_takes_bom_and_crlf_and_refuses_ragged_rows(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes(b"\xef\xbb\xbfid,label\r\na,1\r\nb,2\r\n\r\n")
    df = read_exact(p)
    assert list(df.columns) == ["id", "label"] and df.to_dict("list") == {"id": ["a", "b"], "label": ["1", "2"]}
    p.write_text("id,label\na,1\nb\n")
    with pytest.raises(UserError, match="line 3 has 1 field"):
        read_exact(p)
    p.write_bytes(b"id,label\na,\xff\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_exact(p)


def test_class_values_spell_the_labels_and_class_names_may_head_probability_columns(tmp_path):
    values = ["data.classes=[hem,all]", "data.class_values=[0,1]"]  # C-NMC: the names, and the challenge's 0/1
    cfg, comp, probs, sample = _setup(tmp_path / "a", classes=("hem", "all"), extra=values)
    assert comp.label_values == [0, 1]
    out = _reread(build(cfg, comp, probs))
    by_id = _by_id(comp, probs)
    assert list(out["label"]) == [str(int(np.argmax(by_id[i]))) for i in out["id"]]  # 0/1, not hem/all
    check(cfg, comp, out)

    cfg, comp, probs, sample = _setup(tmp_path / "b", sample_columns=["all", "hem"], classes=("hem", "all"),
                                      extra=values)
    out = _reread(build(cfg, comp, probs))
    assert list(out.columns) == ["id", "all", "hem"]
    by_id = _by_id(comp, probs)
    np.testing.assert_allclose(out["all"].astype(float), [by_id[i][1] for i in out["id"]], rtol=1e-12)
    check(cfg, comp, out)


# --- the positive class of an AUC submission ---------------------------------------------------------

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

    other = load_config(None, [*_auc_overrides(cfg), "data.positive_class=benign"])
    flipped = pd.read_csv(io.StringIO(to_csv_text(build(other, comp, probs))), dtype={"id": str})
    np.testing.assert_allclose(flipped.set_index("id")["label"].loc[comp.test["id"]], 1 - p_mal, rtol=1e-12)


def _auc_overrides(cfg) -> list[str]:
    return [f"data.root={cfg.data.root}", "data.source=competition", "data.solution_csv=solution.csv", "metric=auc",
            f"data.classes=[{','.join(cfg.data.classes)}]", f"data.class_values=[{','.join(cfg.data.class_values)}]"]


# name -> (the competition, what the error must say)
REFUSED = {
    "a sample that fits no encoding": (lambda tmp: _setup(tmp, sample_columns=["a", "b"])[:2],
                                       "neither one value column nor one column per class"),
    "a positive class that is not a class of the data": (  # classes inferred from the data: 0, 1
        lambda tmp: _binary(tmp, "data.positive_class=2")[:2], "'data.positive_class': '2' is not one of the classes"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_frame_that_cannot_be_built_is_refused(tmp_path, case):
    make, needle = REFUSED[case]
    cfg, comp = make(tmp_path)
    with pytest.raises(UserError, match=needle):
        build(cfg, comp, np.full((len(comp.test), comp.num_classes), 1 / comp.num_classes))
