"""The binary decision threshold (comp.predict.cutoff): a cut on P(positive) fit on the OOF for an F1 metric,
kept only when its cross-fitted gain is positive; the submission then holds 0/1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import FAST, write_competition

from comp.experiment import load_config
from comp.predict import cutoff
from comp.predict.submission import make_submission
from comp.train.loop import fit


def test_binary_decision_threshold_is_tuned_on_oof_and_kept_only_when_honest(tmp_path):
    """metric=pf1: a threshold on P(positive) fit on OOF, kept when its cross-fitted gain is positive; the
    submission then holds 0/1 (the RSNA 2023 winners' trick); noise OOF keeps the probabilities."""
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.1).astype(int)
    p = np.clip(0.05 + 0.25 * y + rng.normal(0, 0.08, 400), 0, 1)  # informative but badly calibrated
    folds = np.arange(400) % 4
    t = cutoff.choose("pf1", y, p, folds)
    assert t["method"] == "cutoff" and t["gain_honest"] > 0.2
    best = max(cutoff._f1(y, p >= c) for c in np.unique(p))
    assert t["score_tuned"] == pytest.approx(best)  # the search finds the best cut over the observed values
    noise = cutoff.choose("f1", y, rng.random(400), folds)
    assert noise["gain_honest"] is not None
    over = write_competition(tmp_path / "data", "binary", n=32)
    cfg = load_config(None, FAST + over + [f"out_dir={tmp_path / 'runs'}", "metric=pf1", "epochs=2",
                                           "aug.tta=[identity]"])
    fit(cfg, 0)
    fit(cfg, 1)
    sub = make_submission(cfg)
    saved = json.loads((tmp_path / "runs" / "thresholds.json").read_text())
    values = sub.frame["target"].astype(float)
    if saved["method"] == "cutoff":
        assert set(values) <= {0.0, 1.0}
        assert np.array_equal(values.to_numpy(), (sub.probs[:, saved["positive"]] >= saved["cutoff"]).astype(float))
    else:
        assert np.allclose(values.to_numpy(), sub.probs[:, saved["positive"]])
