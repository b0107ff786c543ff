"""Figures of a fold (training curves, confusion matrix) and of several experiments side by side.
matplotlib with the Agg backend: files only, no display needed."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from comp import io  # noqa: E402
from comp.metrics import confusion  # noqa: E402
from comp.train.oof import oof_probs, prob_columns  # noqa: E402


def save_figure(fig: plt.Figure, path: Path, dpi: int = 100) -> None:
    """A figure as PNG at `path`, written atomically (comp.io), then closed."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
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
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
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
    fig, ax = plt.subplots(figsize=confusion_size(classes))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title or "confusion (normalised by true class)")
    if max((len(str(c)) for c in classes), default=0) > 3:  # long names side by side would overlap
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    save_figure(fig, path)


def fold_figures(fold_dir: Path, classes: list[str], metric: str) -> None:
    """curves.png from metrics.csv and confusion.png from oof.csv of one fold folder (the confusion only for
    one class per image: an OOF with a class `label` and a probability per class; multi-label rows and
    regression values have no confusion matrix)."""
    history = pd.read_csv(fold_dir / "metrics.csv")
    curves(history, metric, fold_dir / "curves.png", title=fold_dir.name)
    oof = pd.read_csv(fold_dir / "oof.csv")
    if "label" not in oof.columns or oof["label"].dtype.kind == "f" or len(prob_columns(oof)) != len(classes):
        return
    confusion_figure(oof["label"].to_numpy(), oof_probs(oof).argmax(1), classes, fold_dir / "confusion.png",
                     fold_dir.name)


def compare_figure(runs: dict[str, list[pd.DataFrame]], metric: str, path: Path, title: str = "") -> None:
    """Several experiments' curves on the same axes (e.g. with vs without pretraining): loss (solid
    valid, dashed train) and the valid metric per epoch, each the mean over the experiment's folds with
    the range of the folds shaded."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
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
