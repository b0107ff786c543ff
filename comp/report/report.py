"""Cross-validation reports from a run's fold folders, for every task (comp.tasks): the CV table (every
metric that scores the task, per fold, their mean and over all out-of-fold predictions pooled), the OOF
classification report where there are classes, the task's OOF figures (comp.report.plots.task_figures), and
several experiments compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.oof import oof_probs, oof_targets, oof_task, row_level
from comp.metrics import METRICS, applies, classification_report, higher_is_better, score, score_all
from comp.tasks import Task


def cv_report(exp: Experiment | Any) -> tuple[pd.DataFrame, float, int, Task]:
    """The CV table of the experiment `exp` (or of a config), written to its cv.csv: one row per fold (`fold`
    = its number, `n` its images, or its submission rows with data.submission_id_column: every score is at
    the submission's level, comp.experiment.oof.row_level), a `mean` row (the folds' mean) and an `oof` row (all
    out-of-fold predictions pooled), with a column per metric that scores the task (comp.metrics.score_all); and the
    CV score (the competition metric over the pooled OOF), the number of folds found and the task.

    Raises:
        UserError: no fold has an oof.csv yet; a metric that does not score the task.
    """
    from comp.metrics import check_metric

    exp = Experiment.of(exp)
    cfg = exp.cfg
    oof = exp.oof()
    task = oof_task(cfg, oof)
    check_metric(cfg.metric, task)
    how = cfg.predict.aggregate  # scored at the submission's level: images grouped into rows (row_level)
    rows = []
    for k, part in oof.groupby("fold"):
        y, out = row_level(part, how, task.positive)
        rows.append({"fold": str(k), "n": len(y), **score_all(y, out, task=task, min_tpr=cfg.pauc_min_tpr)})
    table = pd.DataFrame(rows)
    metrics = [c for c in table.columns if c not in ("fold", "n")]
    mean = {"fold": "mean", "n": int(table["n"].sum()), **table[metrics].mean().to_dict()}
    y, out = row_level(oof, how, task.positive)
    pooled = {"fold": "oof", "n": len(y), **score_all(y, out, task=task, min_tpr=cfg.pauc_min_tpr)}
    table = pd.concat([table, pd.DataFrame([mean, pooled])], ignore_index=True)
    io.write_csv(exp.file("cv"), table)
    return table, float(pooled[cfg.metric]), len(rows), task


def oof_report(exp: Experiment | Any, task: Task | None = None) -> tuple[pd.DataFrame | None, dict[str, Path]]:
    """Per-class precision, recall, F1 and support of the out-of-fold predictions (classes: the argmax, an
    ordinal regression head's rounded value; soft targets: against the argmax of the target shares; None
    for a task without classes), and the task's OOF figures written to <out_dir>/oof_<name>.png
    (comp.report.plots.task_figures: confusion, roc, calibration, scatter), by name."""
    from comp.report.plots import class_truth, task_figures

    exp = Experiment.of(exp)
    oof = exp.oof()
    task = task or oof_task(exp.cfg, oof)
    y, out = oof_targets(oof), oof_probs(oof)
    n = oof["fold"].nunique()
    figures = task_figures(task, y, out, exp.dir, "oof_", f"{exp.dir.name}: out-of-fold, {n} fold{'s' * (n != 1)}")
    if not task.has_classes:
        return None, figures
    return classification_report(class_truth(task, y), task.decode(out), task.names), figures


def load_experiment(run_dir: Path) -> tuple[list[pd.DataFrame], pd.DataFrame | None, str | None, Any]:
    """An experiment folder's per-fold histories (each final run's metrics.csv, every seed's in a bag), its
    out-of-fold predictions (None when no fold has them), its competition metric and its config (the one
    saved in it: comp.experiment.Experiment.open).

    Raises:
        UserError: the folder holds no experiment of this kit, or no trained fold.
    """
    exp = Experiment.open(run_dir)
    histories = exp.histories()
    oof = exp.oof() if exp.oof_files() else None
    return histories, oof, exp.cfg.metric, exp.cfg


def compare(run_dirs: list[Path], path: Path, labels: list[str] | None = None,
            metric: str | None = None) -> pd.DataFrame:
    """One figure of several experiments' curves (comp.report.plots.compare_figure) and a table of their scores:
    folds trained, epochs, mean over folds of each fold's best epoch (the highest score, or the lowest for
    a metric where lower is better), and the out-of-fold CV score (comp.metrics.score under each
    experiment's own task).

    Args:
        run_dirs: experiment folders (each holding fold<K>/ folders).
        labels: a legend name per experiment; default the folder names.
        metric: the metric to plot; default the first experiment's competition metric.

    Raises:
        UserError: a folder without trained folds, a label count that does not match, an unknown metric,
            or one that does not score an experiment's task.
    """
    from comp.report.plots import compare_figure

    if labels and len(labels) != len(run_dirs):
        raise UserError(f"--labels: {len(labels)} labels for {len(run_dirs)} experiments")
    labels = labels or [d.name for d in run_dirs]
    loaded = [load_experiment(d) for d in run_dirs]
    metric = metric or next((m for _, _, m, _ in loaded if m), "accuracy")
    if metric not in METRICS:
        raise UserError(f"--metric: unknown metric {metric!r}; choose from {sorted(METRICS)}")
    for d, (histories, _, _, _) in zip(run_dirs, loaded, strict=True):
        if any(metric not in h.columns for h in histories):
            raise UserError(f"--metric: {d} has no {metric!r} in its metrics.csv (not a metric of its task)")
    compare_figure({lb: h for lb, (h, _, _, _) in zip(labels, loaded, strict=True)}, metric, path)
    best = np.nanmax if higher_is_better(metric) else np.nanmin
    rows = []
    for d, label, (histories, oof, _, cfg) in zip(run_dirs, labels, loaded, strict=True):
        cv = float("nan")
        if oof is not None:
            task = oof_task(cfg, oof)
            if not applies(metric, task):
                raise UserError(f"--metric: {metric!r} does not score {d}'s task={task.kind}")
            cv = score(metric, oof_targets(oof), oof_probs(oof), task=task,
                       min_tpr=cfg.pauc_min_tpr if cfg is not None else 0.8)
        rows.append({"experiment": label, "folds": len(histories), "epochs": max(len(h) for h in histories),
                     f"best {metric} (fold mean)": float(np.mean([best(h[metric]) for h in histories])),
                     f"CV {metric} (out-of-fold)": cv})
    return pd.DataFrame(rows)
