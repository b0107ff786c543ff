"""Kappa cut-points (comp.predict.thresholds): never worse than the argmax on the OOF, better when the
probabilities are miscalibrated, judged honestly (fit on the other folds, scored on the held-out one), fit
once per set of OOF files, on the out-of-fold predictions made as the test predictions are (the TTA OOF),
and used for the submission's labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import make_experiment
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from comp.errors import UserError
from comp.experiment import load_config
from comp.predict import thresholds
from comp.predict.submission import make_submission


@st.composite
def oof_predictions(draw):
    c = draw(st.integers(2, 6))
    n = draw(st.integers(2, 120))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    sharp = draw(st.floats(0.05, 5.0))
    probs = rng.dirichlet(np.full(c, sharp), n)
    if draw(st.booleans()):  # informative: mass moved towards the true grade
        probs = 0.5 * probs + 0.5 * np.eye(c)[np.clip(y + rng.integers(-1, 2, n), 0, c - 1)]
    folds = rng.integers(0, draw(st.integers(1, 5)), n)
    return y, probs, folds


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@settings(max_examples=150, deadline=None)
@given(oof_predictions())
def test_cut_points_never_lower_oof_kappa(data):
    y, probs, folds = data
    c = probs.shape[1]
    t = thresholds.choose(y, probs, folds)
    argmax_kappa = cohen_kappa_score(y, probs.argmax(1), weights="quadratic", labels=range(c))
    pred = thresholds.labels(probs, t)
    kappa = cohen_kappa_score(y, pred, weights="quadratic", labels=range(c))
    if np.isfinite(argmax_kappa):
        assert kappa >= argmax_kappa - 1e-9
        assert abs(t["kappa_argmax"] - argmax_kappa) < 1e-9 and abs(t["kappa"] - kappa) < 1e-9
    if t["method"] == "argmax":
        np.testing.assert_array_equal(pred, probs.argmax(1))
    else:
        assert t["kappa"] > t["kappa_argmax"] and np.all(np.diff(t["cuts"]) > 0)
        assert t["gain_honest"] > 0 and len(np.unique(folds)) >= 2  # kept only on an honest gain


def test_cut_points_fix_miscalibrated_grades():
    """A model whose probabilities lean one grade low (a common effect of label smoothing and class
    imbalance): the expected grade cut at tuned points recovers much of the kappa the argmax loses."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n, c = 600, 5
        y = rng.choice(c, n, p=[0.45, 0.1, 0.25, 0.1, 0.1])
        score = y + rng.normal(0, 0.6, n) - 0.7  # a noisy grade, biased low
        logits = -((np.arange(c)[None, :] - score[:, None]) ** 2)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        t = thresholds.choose(y, probs, np.arange(n) % 5)
        assert t["method"] == "cuts" and t["kappa"] > t["kappa_argmax"] + 0.02, t
        assert t["gain_honest"] > 0.02 and all(f["gain_honest"] > 0 for f in t["folds"]), t


def test_qwk_matches_scikit_learn():
    rng = np.random.default_rng(1)
    for c in (2, 3, 5):
        y, p = rng.integers(0, c, 200), rng.integers(0, c, 200)
        assert abs(thresholds.qwk(y, p, c) - cohen_kappa_score(y, p, weights="quadratic", labels=range(c))) < 1e-12


def test_thresholds_file_is_fit_once_and_decides_the_submission_labels(tmp_path):
    ex = make_experiment(tmp_path, "metric=qwk", "predict.thresholds=true", "aug.tta=[identity]", n_folds=2)
    cfg, out = ex["cfg"], ex["out"]
    sub = make_submission(cfg)
    saved = json.loads((out / "thresholds.json").read_text())
    assert saved["method"] in ("cuts", "argmax") and saved["kappa"] >= saved["kappa_argmax"]
    assert saved["source"] == "oof"  # one TTA view (identity): the plain oof.csv is how test predictions are made
    want = thresholds.labels(sub.probs, saved)
    assert list(sub.frame["label"]) == [str(v) for v in want]

    mtime = (out / "thresholds.json").stat().st_mtime_ns
    make_submission(cfg)
    assert (out / "thresholds.json").stat().st_mtime_ns == mtime  # same OOF files: reused, not refit

    oof = pd.read_csv(out / "fold0" / "oof.csv")
    oof.loc[:, "prob_0"], oof.loc[:, "prob_2"] = oof["prob_2"].to_numpy(), oof["prob_0"].to_numpy()
    oof.to_csv(out / "fold0" / "oof.csv", index=False)
    thresholds.fit_decoding(cfg, 3)
    assert json.loads((out / "thresholds.json").read_text())["oof_digest"] != saved["oof_digest"]  # refit


def test_decoding_and_when_thresholds_apply(tmp_path):
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    t = {"method": "cuts", "cuts": [0.5, 0.9], "num_classes": 3}  # expected grades 0.7 and 1.3
    np.testing.assert_array_equal(thresholds.labels(probs, t), [1, 2])
    np.testing.assert_array_equal(thresholds.labels(probs, None), [0, 2])

    ex = make_experiment(tmp_path, "metric=qwk")
    assert thresholds.fit_decoding(ex["cfg"], 3) is not None
    assert thresholds.fit_decoding(load_config(None, ex["overrides"] + ["metric=accuracy"]), 3) is None
    assert thresholds.fit_decoding(load_config(None, ex["overrides"] + ["predict.thresholds=false"]), 3) is None
    for k in (0, 1):  # no OOF (the offline package): the saved file is used as it is
        (ex["out"] / f"fold{k}" / "oof.csv").unlink()
    assert thresholds.fit_decoding(ex["cfg"], 3) == json.loads((ex["out"] / "thresholds.json").read_text())
    with pytest.raises(UserError, match="not a thresholds file for 5 classes"):
        thresholds.fit_decoding(ex["cfg"], 5)


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
