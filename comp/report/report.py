"""Cross-validation reports from a run's fold folders: the out-of-fold classification report and confusion
matrix, and several experiments compared (the per-fold and CV scores themselves: comp.train.oof.cv_table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from comp.config import resolve_path
from comp.errors import UserError
from comp.metrics import METRICS, classification_report
from comp.train.oof import classes_of, load_oof, oof_probs


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
    """One figure of several experiments' curves (comp.report.plots.compare_figure) and a table of their scores:
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
