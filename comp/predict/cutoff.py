"""A decision threshold for a binary task scored on hard labels: metric=f1, or metric=pf1 (RSNA 2023's
probabilistic F1, where the winners submitted 0/1 predictions cut at a threshold tuned on OOF: pF1 of 0/1
predictions is the plain F1, and on imbalanced data it is well above the pF1 of the probabilities).

The threshold maximises the F1 of `P(positive) >= t` on the OOF predictions, exactly (every cut between
two observed probabilities). As with the kappa cut-points (comp.predict.thresholds), its gain
over the baseline (F1 at 0.5; pF1 of the probabilities themselves) is measured honestly, cross-fitted
(each fold cut at the threshold fit on the other folds), and the threshold is kept only when that honest
gain is positive. The decision is saved in `<out_dir>/thresholds.json` (method `cutoff` or `probs`) by
comp.predict.thresholds.load_or_fit, and shipped in the offline package with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from comp.competition_metrics import probabilistic_f1


def _f1(y: np.ndarray, hard: np.ndarray) -> float:
    tp = float((hard & (y == 1)).sum())
    denom = float(hard.sum() + (y == 1).sum())
    return 0.0 if denom == 0 else 2 * tp / denom


def baseline(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    """The score without a tuned threshold: F1 of `p >= 0.5` (metric f1), pF1 of `p` (metric pf1)."""
    return _f1(y, p >= 0.5) if metric == "f1" else probabilistic_f1(y, p)


def fit(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising the F1 of `p >= threshold` over (N,) 0/1 `y` and (N,) probabilities `p`,
    exactly: every cut between two distinct probabilities is scored at once from the cumulative true
    positives of the descending order (F1 = 2 TP / (predicted + actual positives)); the threshold is the
    midpoint of the cut."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys == 1)
    k = np.arange(1, len(p) + 1)
    f1 = 2 * tp / (k + max(int((y == 1).sum()), 1))
    last = np.r_[ps[1:] < ps[:-1], True]  # the last row of each run of equal probabilities: a valid cut
    i = int(np.flatnonzero(last)[np.argmax(f1[last])])
    cut = ps[i] if i == len(ps) - 1 else (ps[i] + ps[i + 1]) / 2
    return float(cut), float(f1[i])


def choose(metric: str, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """The decoding for a binary task's OOF (the dict thresholds.json holds): `cutoff` with the threshold fit
    on every row when its honest (cross-fitted) gain over `baseline` is positive, else `probs` (the
    probabilities as they are for pf1, the 0.5 cut for f1). Keys: method, cutoff, metric, n_oof,
    score_baseline, score_tuned (in-sample), score_honest (None with one fold), gain_honest, folds."""
    y, p, folds = np.asarray(y).astype(np.int64), np.asarray(p, np.float64), np.asarray(folds)
    base = baseline(metric, y, p)
    cut, tuned = fit(y, p)
    honest_hard = None
    if len(np.unique(folds)) >= 2:
        honest_hard = np.zeros(len(y), bool)
        for k in np.unique(folds):
            held = folds == k
            t, _ = fit(y[~held], p[~held])
            honest_hard[held] = p[held] >= t
    honest = None if honest_hard is None else _f1(y, honest_hard)
    gain = None if honest is None else honest - base
    keep = gain is not None and gain > 0 and tuned > base
    per_fold = [{"fold": int(k), "n": int((folds == k).sum()),
                 "gain_honest": None if honest_hard is None else
                 _f1(y[folds == k], honest_hard[folds == k]) - baseline(metric, y[folds == k], p[folds == k])}
                for k in np.unique(folds)]
    return {"method": "cutoff" if keep else "probs", "cutoff": cut if keep else None, "metric": metric,
            "n_oof": int(len(y)), "score_baseline": base, "score_tuned": tuned, "score_honest": honest,
            "gain_honest": gain, "folds": per_fold}
