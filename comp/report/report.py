"""Cross-validation reports from a run's fold folders: per-fold scores and the out-of-fold score, the
out-of-fold classification report and confusion matrix, and several experiments compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from comp.config import resolve_path
from comp.errors import UserError
from comp.metrics import METRICS, classification_report


def load_oof(out_dir: Path, n_folds: int) -> pd.DataFrame:
    """The out-of-fold predictions of every trained fold, concatenated (id, label, prob_*, fold)."""
    parts = []
    for k in range(n_folds):
        path = out_dir / f"fold{k}" / "oof.csv"
        if path.is_file():
            parts.append(pd.read_csv(path, dtype={"id": str}).assign(fold=k))
    if not parts:
        raise UserError(f"no fold of {out_dir} has an oof.csv yet; train a fold first")
    return pd.concat(parts, ignore_index=True)


def oof_probs(oof: pd.DataFrame) -> np.ndarray:
    return oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()


def cv_table(cfg: Any) -> tuple[pd.DataFrame, float, int]:
    """Per-fold scores of every metric, and the competition metric over all out-of-fold predictions
    together (the CV score), with the number of folds found."""
    out_dir = resolve_path(cfg.out_dir)
    oof = load_oof(out_dir, cfg.folds.n_folds)
    rows = []
    for k, part in oof.groupby("fold"):
        y, p = part["label"].to_numpy(), oof_probs(part)
        rows.append({"fold": k, "n": len(part), **{m: fn(y, p) for m, fn in METRICS.items()}})
    table = pd.DataFrame(rows)
    cv = METRICS[cfg.metric](oof["label"].to_numpy(), oof_probs(oof))
    return table, cv, len(rows)


def classes_of(oof: pd.DataFrame) -> list[str]:
    """Class names in label order, from the prob_<name> columns."""
    return [c[len("prob_"):] for c in oof.columns if c.startswith("prob_")]


def oof_report(cfg: Any) -> tuple[pd.DataFrame, Path]:
    """Per-class precision, recall, F1 and support of the out-of-fold predictions (argmax), and the OOF
    confusion matrix figure (normalised by true class), written to <out_dir>/oof_confusion.png."""
    from comp.report.plots import confusion_figure

    out_dir = resolve_path(cfg.out_dir)
    oof = load_oof(out_dir, cfg.folds.n_folds)
    classes = classes_of(oof)
    y, pred = oof["label"].to_numpy(), oof_probs(oof).argmax(1)
    path = out_dir / "oof_confusion.png"
    n = oof["fold"].nunique()
    confusion_figure(y, pred, classes, path, title=f"{out_dir.name}: out-of-fold, {n} fold{'s' * (n != 1)}")
    return classification_report(y, pred, classes), path


def load_experiment(run_dir: Path) -> tuple[list[pd.DataFrame], pd.DataFrame | None, str | None]:
    """An experiment folder's per-fold histories (fold*/metrics.csv), its out-of-fold predictions (None
    when no fold has an oof.csv) and its competition metric (from a fold's config.yaml).

    Raises:
        UserError: the folder holds no trained fold.
    """
    folds = sorted(p.parent for p in run_dir.glob("fold*/metrics.csv"))
    if not folds:
        raise UserError(f"{run_dir} holds no trained fold (no fold*/metrics.csv)")
    histories = [pd.read_csv(f / "metrics.csv") for f in folds]
    oofs = [pd.read_csv(f / "oof.csv", dtype={"id": str}) for f in folds if (f / "oof.csv").is_file()]
    metric = None
    for f in folds:
        if (f / "config.yaml").is_file():
            metric = OmegaConf.load(f / "config.yaml").get("metric")
            break
    return histories, pd.concat(oofs, ignore_index=True) if oofs else None, metric


def compare(run_dirs: list[Path], path: Path, labels: list[str] | None = None,
            metric: str | None = None) -> pd.DataFrame:
    """One figure of several experiments' curves (comp.plots.compare_figure) and a table of their scores:
    folds trained, epochs, mean best-epoch score over folds, and the out-of-fold CV score.

    Args:
        run_dirs: experiment folders (each holding fold<K>/ folders).
        labels: a legend name per experiment; default the folder names.
        metric: the metric to plot; default the first experiment's competition metric.

    Raises:
        UserError: a folder without trained folds, a label count that does not match, an unknown metric.
    """
    from comp.report.plots import compare_figure

    if labels and len(labels) != len(run_dirs):
        raise UserError(f"--labels: {len(labels)} labels for {len(run_dirs)} experiments")
    labels = labels or [d.name for d in run_dirs]
    loaded = [load_experiment(d) for d in run_dirs]
    metric = metric or next((m for _, _, m in loaded if m), "accuracy")
    if metric not in METRICS:
        raise UserError(f"--metric: unknown metric {metric!r}; choose from {sorted(METRICS)}")
    compare_figure({lb: h for lb, (h, _, _) in zip(labels, loaded, strict=True)}, metric, path)
    rows = []
    for label, (histories, oof, _) in zip(labels, loaded, strict=True):
        rows.append({"experiment": label, "folds": len(histories),
                     "epochs": max(len(h) for h in histories),
                     f"best {metric} (fold mean)": float(np.mean([h[metric].max() for h in histories])),
                     f"CV {metric} (out-of-fold)": METRICS[metric](oof["label"].to_numpy(), oof_probs(oof))
                     if oof is not None else float("nan")})
    return pd.DataFrame(rows)
