"""Cut-points for ordinal grades (metric=qwk): decode the expected grade instead of the argmax.

The expected grade Σ_c p_c·c of a softmax over ordered grades is a continuous score; cutting it at
thresholds tuned on the out-of-fold predictions gained ~0.01-0.02 kappa in APTOS 2019 (the top
write-ups' "OptimizedRounder" over a regression output). Kappa is piecewise constant in the cut-points,
so Nelder-Mead stalls on its plateaus; a coordinate search over the observed scores is exact for one
cut at a time and takes ~0.7 s on 3,662 OOF rows (APTOS 2019's size; one CPU core).

Cut-points judged on the rows they were fit on look better than they are: tuned on probabilities that
carry no information, they gain ~+0.08 kappa over the argmax on 150 rows (tests/predict/test_thresholds.py).
So the gain is also measured honestly, cross-fitted: for each fold, the cut-points are fit on the other
folds' OOF and scored on it (K more searches: ~4 s for 5 folds of APTOS, once per set of OOF files). Both
gains, per fold and pooled, are logged and saved, and the cut-points (fit on every row) are kept only
when the honest pooled gain is positive (and the in-sample one too); otherwise the decoding is the argmax.

They are fit on OOF predictions made the way test predictions are: with the config's TTA views
(comp.predict.oof_tta, each fold's oof_tta.csv) when aug.tta has more than the identity view, else on the
plain oof.csv files. Each fold's OOF still comes from one model, where the test predictions average
the folds (a smoother score); that difference remains.

The result is the experiment's thresholds.json, refit only when the OOF files change, reused at prediction
time and shipped in the offline package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from comp import io
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.oof import aggregate, oof_probs, oof_task, row_level
from comp.log import log
from comp.predict import cutoff, oof_tta

VERSION = 2  # 2: the honest (cross-fitted) gain decides; a file of another version is refit
GRID = 256  # candidate positions per cut-point per round (quantiles of the scores inside its interval)
ROUNDS = 20  # coordinate-search sweeps; it stops earlier as soon as one sweep changes nothing


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """(N, C) probabilities over grades 0..C-1 → (N,) expected grade; (N, 1) → the value of a regression
    head on the grade (model.head=regression), as it is."""
    if probs.shape[1] == 1:
        return probs[:, 0].astype(np.float64)
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def decode(probs: np.ndarray, cuts: np.ndarray | None, num_classes: int | None = None) -> np.ndarray:
    """Grades (N,): the expected grade cut at `cuts` (C-1 increasing values); when None, the argmax, or a
    regression head's value rounded to the nearest of the grades 0..num_classes-1."""
    if cuts is None:
        if probs.shape[1] == 1:
            return np.clip(np.rint(probs[:, 0]), 0, (num_classes or 2) - 1).astype(np.int64)
        return probs.argmax(1)
    return np.searchsorted(np.asarray(cuts), expected_grade(probs), side="right")


def qwk(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Quadratic weighted kappa over the grades 0..num_classes-1: scikit-learn's
    cohen_kappa_score(weights='quadratic', labels=range(num_classes)) (comp.metrics.qwk), ~50x faster for
    the thousands of evaluations of a search; 0 where that is undefined (one grade on both sides).
    tests/test_metrics.py proves the two equal on random inputs with absent grades."""
    n = num_classes
    observed = np.bincount(y * n + pred, minlength=n * n).reshape(n, n).astype(np.float64)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(len(y), 1)
    grid = np.arange(n)
    w = (grid[:, None] - grid[None, :]) ** 2
    denom = (w * expected).sum()
    return 0.0 if denom == 0 else float(1 - (w * observed).sum() / denom)


def fit_cuts(y: np.ndarray, probs: np.ndarray, num_classes: int | None = None) -> tuple[np.ndarray, float]:
    """Cut-points maximising OOF kappa by coordinate search from the rounding points 0.5, 1.5, ...

    Each cut in turn moves to the best of up to GRID candidates strictly between its neighbours (a move
    must improve kappa, so the search ends); sweeps repeat until none moves. Returns (cuts, kappa).
    `num_classes`: the grades of a regression head's (N, 1) values; default probs.shape[1]."""
    c = num_classes or probs.shape[1]
    score = expected_grade(probs)
    cuts = np.arange(c - 1, dtype=np.float64) + 0.5
    best = qwk(y, np.searchsorted(cuts, score, side="right"), c)
    for _ in range(ROUNDS):
        moved = False
        for j in range(c - 1):
            lo = cuts[j - 1] if j > 0 else -np.inf
            hi = cuts[j + 1] if j < c - 2 else np.inf
            inside = np.unique(score[(score > lo) & (score < hi)])
            if len(inside) < 2:
                continue
            mids = (inside[:-1] + inside[1:]) / 2  # every distinct split of the scores in (lo, hi)
            if len(mids) > GRID:
                mids = np.unique(np.quantile(mids, np.linspace(0, 1, GRID)))
            for m in mids:
                trial = cuts.copy()
                trial[j] = m
                k = qwk(y, np.searchsorted(trial, score, side="right"), c)
                if k > best + 1e-12:
                    best, cuts, moved = k, trial, True
        if not moved:
            break
    return cuts, best


def cross_fit(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(N,) grades of each OOF row decoded with cut-points fit on the other folds' rows only (`folds`:
    (N,) fold of each row, at least two distinct); the honest counterpart of `decode(probs, fit_cuts(...))`."""
    pred = np.empty(len(y), dtype=np.int64)
    for k in np.unique(folds):
        held = folds == k
        cuts, _ = fit_cuts(y[~held], probs[~held], num_classes)
        pred[held] = decode(probs[held], cuts)
    return pred


def choose(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, num_classes: int | None = None) -> dict[str, Any]:
    """The decoding to use for these OOF predictions (the dict thresholds.json holds): the cut-points fit on
    every row when both their in-sample gain over the argmax and their honest (cross-fitted, `cross_fit`)
    gain are positive, else the argmax. With a single fold there is no honest estimate: argmax.

    Keys: method (cuts | argmax), cuts, num_classes, n_oof, kappa_argmax, kappa_tuned (in-sample, the cuts
    on the rows they were fit on), kappa_honest (cross-fitted, None with one fold), gain_in_sample,
    gain_honest, kappa (that of the chosen decoding, in-sample), folds (per fold: fold, n, kappa_argmax,
    gain_in_sample, gain_honest)."""
    c = num_classes or probs.shape[1]
    y, folds = np.asarray(y, dtype=np.int64), np.asarray(folds)
    argmax = decode(probs, None, c)  # a regression head's baseline: its value rounded
    kappa_argmax = qwk(y, argmax, c)
    cuts, kappa_tuned = fit_cuts(y, probs, c)
    tuned = decode(probs, cuts)
    honest = cross_fit(y, probs, folds, c) if len(np.unique(folds)) >= 2 else None
    per_fold = []
    for k in np.unique(folds):
        m = folds == k
        base = qwk(y[m], argmax[m], c)
        per_fold.append({"fold": int(k), "n": int(m.sum()), "kappa_argmax": base,
                         "gain_in_sample": qwk(y[m], tuned[m], c) - base,
                         "gain_honest": None if honest is None else qwk(y[m], honest[m], c) - base})
    kappa_honest = None if honest is None else qwk(y, honest, c)
    gain_honest = None if kappa_honest is None else kappa_honest - kappa_argmax
    keep = kappa_tuned > kappa_argmax and gain_honest is not None and gain_honest > 0
    return {"method": "cuts" if keep else "argmax", "cuts": [float(v) for v in cuts] if keep else None,
            "num_classes": c, "n_oof": int(len(y)), "kappa_argmax": kappa_argmax, "kappa_tuned": kappa_tuned,
            "kappa_honest": kappa_honest, "gain_in_sample": kappa_tuned - kappa_argmax, "gain_honest": gain_honest,
            "kappa": kappa_tuned if keep else kappa_argmax, "folds": per_fold}


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.parent.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def read(path: Path, num_classes: int) -> dict[str, Any]:
    """A thresholds.json, checked against the number of classes."""
    try:
        t = json.loads(path.read_text())
        ok = t["method"] in ("cuts", "argmax", "cutoff", "probs") and t["num_classes"] == num_classes
        if t["method"] == "cutoff":
            ok = ok and 0.0 <= float(t["cutoff"]) <= 1.0 and t["positive"] in (0, 1)
        if t["method"] == "cuts":
            ok = ok and len(t["cuts"]) == num_classes - 1 and bool(np.all(np.diff(t["cuts"]) > 0))
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a thresholds file for {num_classes} classes; delete it to refit")
    return t


def _gain(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def uses_decoding(cfg: Any) -> bool:
    """Whether predictions are decoded with something fit on the OOF: qwk cut-points, or a binary task's
    decision threshold for f1 / pf1 (predict.thresholds on)."""
    binary_cut = cfg.task == "binary" and cfg.metric in ("f1", "pf1")  # a decision threshold (comp.predict.cutoff)
    return (cfg.metric == "qwk" or binary_cut) and bool(cfg.predict.thresholds)


def fit_decoding(exp: Experiment | Any, num_classes: int, comp: Any = None) -> dict[str, Any] | None:
    """The decoding of this experiment's predictions, or None when they use the argmax (metric is not qwk,
    nor f1/pf1 of a binary task, predict.thresholds=false, or neither OOF predictions nor a saved
    thresholds.json exist). A step of its own, logged as such (make_submission runs it before the test set).

    With OOF files, the experiment's thresholds.json is reused while it was fit on exactly these files, else
    refit and rewritten. When aug.tta has more than the identity view, it is fit on out-of-fold predictions
    made with those views (comp.predict.oof_tta: each fold's validation images predicted once more, reused
    while the folds are unchanged; `comp`: the loaded competition, or None to load it), as the test set is
    predicted. Without OOF files (the offline package), the saved file is used as it is."""
    exp = Experiment.of(exp)
    cfg = exp.cfg
    if not uses_decoding(cfg):
        return None
    binary_cut = cfg.task == "binary"
    path = exp.file("thresholds")
    files = exp.oof_files()
    if not files:
        if path.is_file():
            t = read(path, num_classes)
            fit = (f"OOF {t['metric']} {t['score_tuned']:.4f}" if "cutoff" in t  # a binary decision threshold
                   else f"OOF kappa {t['kappa']:.4f}")  # qwk cut-points
            log(f"decoding: {t['method']} from {path} ({fit})")
            return t
        log("decoding: no out-of-fold predictions to tune cut-points on; decoding with the argmax")
        return None
    kind = "oof"
    if oof_tta.uses_tta(cfg):
        log(f"decoding: the {'decision threshold' if binary_cut else 'cut-points'} are fit on out-of-fold "
            f"predictions made as the test set's are, with the TTA views {list(cfg.aug.tta)}: each trained fold's "
            f"validation images are predicted once more (reused while the folds are unchanged)")
        files, kind = oof_tta.write_tta_oof(exp, comp), "oof_tta"
    digest = _digest(files)
    if path.is_file():
        t = read(path, num_classes)
        if t.get("oof_digest") == digest and t.get("version") == VERSION:
            log(f"decoding: {t['method']} from {path} (fit on these out-of-fold files)")
            return t
    oof = exp.oof(kind)
    if binary_cut:
        return _fit_cutoff(cfg, oof, path, digest, kind, num_classes)
    probs = oof_probs(oof)
    if probs.shape[1] not in (1, num_classes):
        raise UserError(f"{files[0]} has {probs.shape[1]} probability columns but the data has {num_classes} classes")
    t = {"version": VERSION, **choose(oof["label"].to_numpy(), probs, oof["fold"].to_numpy(), num_classes),
         "source": kind, "oof_digest": digest}
    io.write_json(path, t, what="thresholds")
    for f in t["folds"]:
        log(f"decoding: fold{f['fold']} ({f['n']} rows) kappa gain over the argmax: in-sample "
            f"{_gain(f['gain_in_sample'])}, honest (cut-points fit on the other folds) {_gain(f['gain_honest'])}")
    shown = (f"cut-points {np.round(t['cuts'], 3).tolist()}" if t["cuts"] else
             "argmax kept (the cut-points' honest gain is not positive)")
    log(f"decoding: {kind} qwk {t['kappa_argmax']:.4f} (argmax); cut-points gain {_gain(t['gain_in_sample'])} "
        f"in-sample, {_gain(t['gain_honest'])} honest; {shown}; saved {path}")
    return t


def _fit_cutoff(cfg: Any, oof: Any, path: Path, digest: str, source: str, num_classes: int) -> dict[str, Any]:
    """thresholds.json for a binary task's decision threshold (comp.predict.cutoff), fit on the OOF at the
    submission's level (rows aggregated: data.submission_id_column)."""
    positive = oof_task(cfg, oof).positive
    y, out = row_level(oof, cfg.predict.aggregate, positive)
    folds = oof["fold"].to_numpy()
    if "row" in oof.columns:  # a row's images share a fold (its group is whole)
        folds = aggregate(oof["row"].to_numpy(), folds, oof_probs(oof), "mean", positive)[1]
    t = {"version": VERSION, **cutoff.choose(cfg.metric, (np.asarray(y) == positive).astype(np.int64),
                                             out[:, positive], folds),
         "num_classes": num_classes, "positive": positive, "source": source, "oof_digest": digest}
    io.write_json(path, t, what="thresholds")
    shown = f"threshold {t['cutoff']:.4f}" if t["cutoff"] is not None else "probabilities kept"
    log(f"decoding: {source} {cfg.metric} {t['score_baseline']:.4f} without a threshold; tuned {t['score_tuned']:.4f}"
        f" in-sample, honest gain {_gain(t['gain_honest'])}; {shown}; saved {path}")
    return t


def labels(probs: np.ndarray, t: dict[str, Any] | None) -> np.ndarray:
    """Class indices for `probs` under the decoding `t` (None: argmax; a binary `cutoff`: the positive
    class where its probability reaches the threshold)."""
    if t is not None and t["method"] in ("cutoff", "probs"):
        pos = int(t["positive"])
        cut = float(t["cutoff"]) if t["method"] == "cutoff" else 0.5
        return np.where(probs[:, pos] >= cut, pos, 1 - pos)
    return decode(probs, None if t is None or t["method"] == "argmax" else np.asarray(t["cuts"]),
                  None if t is None else t["num_classes"])
