"""Figures of a fold or of the out-of-fold predictions (training curves; per task: confusion matrix, ROC
curves, reliability diagram, prediction against truth) and of several experiments side by side.
matplotlib Figure objects drawn by the Agg canvas (`new_figure`): files only, no display needed, and no pyplot
state: importing or drawing changes no backend or figure list of the user's process. Every figure is
written through comp.io.

Which figures a task gets (`task_figures`): the confusion matrix where there are classes (multiclass,
binary, ordinal; soft targets against the argmax of the target shares); ROC curves and a reliability
diagram of the positive class (binary) or of each label (multi-label); the prediction against the truth
for a regression head (regression values; an ordinal model's value against the grade)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from comp import io
from comp.experiment import RunFiles
from comp.experiment.oof import oof_probs, oof_targets
from comp.metrics import confusion
from comp.tasks import Task


def new_figure(**kw) -> Figure:
    """A matplotlib Figure (`kw`: figsize, dpi, ...) on its own Agg canvas: no pyplot, so no backend is
    chosen and no figure is kept anywhere; it is freed with its last reference."""
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    """A figure as PNG at `path`, written atomically (comp.io)."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    io.write_bytes(path, buf.getvalue(), what="figure")

def _epoch_axis(axes: tuple, epochs: pd.Series) -> None:
    """Whole epochs on the x axis, half an epoch of room at each end (one epoch: a tick at it, not +-0.05)."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs.nunique() <= 10:  # MaxNLocator falls back to fractions on a range under one epoch
            ax.set_xticks(sorted(epochs.unique()))
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)


def curves(history: pd.DataFrame, metric: str, path: Path, title: str = "") -> None:
    """Train/valid loss and the metric per epoch, in two panels; each epoch a marker, so a one-epoch run
    shows its point (a line needs two)."""
    fig = new_figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(history["epoch"], history["train_loss"], marker="o", label="train")  # markers: one epoch is a point
    a.plot(history["epoch"], history["valid_loss"], marker="o", label="valid")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(history["epoch"], history[metric], marker="o", color="C2")
    b.set(xlabel="epoch", ylabel=metric, title=f"valid {metric}")
    _epoch_axis((a, b), history["epoch"])
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


CONFUSION_MIN_INCHES = (5.0, 4.2)  # (w, h): measured, a 2-class matrix with its title and labels fits clear
CELL_INCHES = 0.6  # per class, each axis: room for "0.00\n(123)" at fontsize 7
CHAR_INCHES = 0.07  # per character of the longest class name (the y tick labels, the rotated x ones)


def confusion_size(classes: list[str]) -> tuple[float, float]:
    """The confusion figure's (width, height) in inches for these classes (see confusion_figure)."""
    n, longest = len(classes), max((len(str(c)) for c in classes), default=1)
    label = CHAR_INCHES * longest
    return (max(CONFUSION_MIN_INCHES[0], 1.6 + label + CELL_INCHES * n),
            max(CONFUSION_MIN_INCHES[1], 1.4 + label + CELL_INCHES * n))


def confusion_figure(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """Confusion matrix normalised by true class (rows sum to 1), counts in each cell. The figure grows with
    the class count and the longest class name, from a minimum (CONFUSION_MIN_INCHES) at which the title,
    the axis labels and the cells of two or three classes do not touch."""
    norm = confusion(y, pred, len(classes), normalize="true")
    counts = confusion(y, pred, len(classes))
    fig = new_figure(figsize=confusion_size(classes))
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title or "confusion (normalised by true class)")
    if max((len(str(c)) for c in classes), default=0) > 3:  # long names side by side would overlap
        for label in ax.get_xticklabels():
            label.set(rotation=45, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    save_figure(fig, path)


def class_truth(task: Task, y: np.ndarray) -> np.ndarray:
    """(N,) int true class of each row of a class task: the class index, or the argmax of a soft target's
    shares (its majority class)."""
    return np.asarray(y).argmax(1) if task.soft else np.asarray(y).astype(np.int64)


def roc_figure(truth: np.ndarray, scores: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    """ROC curves (sklearn.metrics.roc_curve) of (N, L) 0/1 `truth` against (N, L) `scores`, one per column
    `names[k]`, its AUC in the legend; a column whose truth holds one value only has no curve (said so)."""
    fig = new_figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for k, name in enumerate(names):
        t = truth[:, k]
        if t.min() == t.max():
            ax.plot([], [], " ", label=f"{name}: one class only, no ROC")
            continue
        fpr, tpr, _ = skm.roc_curve(t, scores[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(t, scores[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=title or "ROC")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def calibration_figure(truth: np.ndarray, probs: np.ndarray, names: list[str], path: Path, title: str = "",
                       n_bins: int = 10) -> None:
    """Reliability diagram: per column, the share of positives against the mean predicted probability in
    `n_bins` equal-width bins (sklearn.calibration.calibration_curve; empty bins left out), with the
    diagonal of perfect calibration and the column's Brier score in the legend."""
    fig = new_figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for k, name in enumerate(names):
        frac, mean = calibration_curve(truth[:, k], probs[:, k], n_bins=n_bins, strategy="uniform")
        brier = skm.brier_score_loss(truth[:, k], probs[:, k])
        ax.plot(mean, frac, marker="o", label=f"{name} (Brier {brier:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="mean predicted probability", ylabel="fraction of positives",
           title=title or "reliability")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def scatter_figure(truth: np.ndarray, pred: np.ndarray, path: Path, xlabel: str = "truth",
                   ylabel: str = "prediction", title: str = "") -> None:
    """The prediction against the truth of each row, the line y = x, and MAE and RMSE in the title."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    err = pred - truth
    fig = new_figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.scatter(truth, pred, s=12, alpha=0.6)
    lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    pad = (hi - lo) * 0.05 or 0.5
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="grey", linewidth=1, label="y = x")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title}\nMAE {np.abs(err).mean():.4g}, "
           f"RMSE {np.sqrt((err ** 2).mean()):.4g}".strip())
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def task_figures(task: Task, y: np.ndarray, out: np.ndarray, directory: Path, prefix: str = "",
                 title: str = "") -> dict[str, Path]:
    """The figures of `task` (module docstring) for targets `y` (comp.experiment.oof.oof_targets) and outputs
    `out` (N, K), written to `<directory>/<prefix><name>.png`; returns {name: path} for the names
    confusion, roc, calibration, scatter that the task has."""
    paths: dict[str, Path] = {}

    def at(name: str) -> Path:
        paths[name] = directory / f"{prefix}{name}.png"
        return paths[name]

    if task.has_classes:
        confusion_figure(class_truth(task, y), task.decode(out), task.names, at("confusion"), title)
    for (target, _), s in zip(task.heads, task.slices(), strict=True):  # multihead: each head's own
        seen = np.asarray(y)[:, s].sum(axis=1) > 0  # the rows that label this target
        confusion_figure(np.asarray(y)[seen, s].argmax(1), out[seen, s].argmax(1),
                         [n[len(target) + 1:] for n in task.names[s]], at(f"confusion_{target}"),
                         f"{title}: {target}" if title else target)
    if task.kind in ("binary", "multilabel"):
        if task.kind == "binary":
            truth = (class_truth(task, y) == task.positive).astype(int)[:, None]
            probs, names = out[:, [task.positive]], [f"{task.names[task.positive]} (positive class)"]
        else:
            truth, probs, names = (np.asarray(y) >= 0.5).astype(int), out, task.names
        roc_figure(truth, probs, names, at("roc"), f"{title}: ROC" if title else "")
        calibration_figure(truth, probs, names, at("calibration"), f"{title}: reliability" if title else "")
    if task.head == "regression":
        what = "grade" if task.kind == "ordinal" else task.names[0]
        scatter_figure(np.asarray(y, np.float64), task.values(out), at("scatter"), f"true {what}",
                       f"predicted {'value' if task.kind == 'ordinal' else what}", title)
    return paths


def saved_task(config: Path | None, oof: pd.DataFrame) -> Task:
    """The task of an OOF frame: comp.experiment.oof.oof_task under the config saved with the run or
    experiment (`config`, a config.yaml), else (a run of a kit older than the file) a multiclass softmax over
    the OOF's classes."""
    from comp.config import read_config
    from comp.experiment.oof import classes_of, oof_task

    if config is None or not config.is_file():
        return Task(kind="multiclass", names=classes_of(oof), head="softmax")
    return oof_task(read_config(config), oof)


def fold_figures(files: RunFiles, metric: str) -> dict[str, Path]:
    """curves.png from a run's metrics.csv, and the task's figures (`task_figures`: confusion.png, roc.png,
    calibration.png, scatter.png) from its oof.csv, in the run's folder (the task read from the run's
    config.yaml and oof.csv)."""
    d = files.dir
    history = pd.read_csv(files.metrics)
    curves(history, metric, d / "curves.png", title=d.name)
    oof = pd.read_csv(files.oof, dtype={"id": str})
    task = saved_task(files.config, oof)
    return {"curves": d / "curves.png", **task_figures(task, oof_targets(oof), oof_probs(oof), d, "", d.name)}


def compare_figure(runs: dict[str, list[pd.DataFrame]], metric: str, path: Path, title: str = "") -> None:
    """Several experiments' curves on the same axes (e.g. with vs without pretraining): loss (solid
    valid, dashed train) and the valid metric per epoch, each the mean over the experiment's folds with
    the range of the folds shaded."""
    fig = new_figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    for i, (label, histories) in enumerate(runs.items()):
        color = f"C{i}"
        for ax, column, style in ((a, "valid_loss", "-"), (a, "train_loss", "--"), (b, metric, "-")):
            table = pd.concat([h.set_index("epoch")[column] for h in histories], axis=1)  # (epochs, folds)
            mean = table.mean(axis=1)
            ax.plot(mean.index, mean, style, marker="o", color=color,  # a one-epoch run is a point: a marker
                    label=label if style == "-" else None)
            if table.shape[1] > 1 and style == "-":
                ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.15)
    a.set(xlabel="epoch", ylabel="loss", title="loss (solid: valid, dashed: train)")
    b.set(xlabel="epoch", ylabel=metric, title=f"valid {metric} (mean over folds, range shaded)")
    _epoch_axis((a, b), pd.concat([h["epoch"] for hs in runs.values() for h in hs]))
    for ax in (a, b):
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
