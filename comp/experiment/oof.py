"""Out-of-fold predictions: each fold's oof.csv (comp.experiment.layout), the validation images of the fold
predicted by the model of its best epoch. The one writer and reader of the format, and the cross-validation
score computed from it (the CV score every report and submission record shows).

Columns: `id`; the targets: `label` (a class index, or a regression value), or `target_<name>` per label
or class (multi-label, soft targets); the outputs (comp.tasks.Task.output_columns): `prob_<name>` per
class or label, or `value` (a regression head; with `sigma`, its sd, for a head with a scale). Test outputs
saved for blending (`predict.py --save-probs`) use the same output columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io
from comp.data.targets import TARGET
from comp.errors import UserError
from comp.metrics import positive_index, score, score_all
from comp.tasks import Task, make_task

PREFIX = "prob_"


def prob_frame(ids: list[str], probs: np.ndarray, classes: list[str] | Task, labels: np.ndarray | None = None,
               rows: list[str] | None = None) -> pd.DataFrame:
    """id[, row][, targets], outputs for (N, K) outputs `probs` in row order: `prob_<class>` columns for a list
    of class names, or the task's output columns (module doc); (N, K) `labels` become `target_<name>`
    columns; `rows`: each image's submission row (data.submission_id_column)."""
    names = classes.names if isinstance(classes, Task) else list(classes)
    columns = classes.output_columns() if isinstance(classes, Task) else [f"{PREFIX}{n}" for n in names]
    df = pd.DataFrame({"id": list(ids)})
    if rows is not None:
        df["row"] = list(rows)
    parts = [df]  # the columns joined at once (RSNA 2024's 75 outputs one by one fragment the frame)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2:
            parts.append(pd.DataFrame(labels, columns=[f"{TARGET}{name}" for name in names]))
        else:
            df["label"] = labels
    parts.append(pd.DataFrame(np.asarray(probs)[:, :len(columns)], columns=list(columns)))
    return pd.concat(parts, axis=1)


def write_oof(path: Path, ids: list[str], labels: np.ndarray, probs: np.ndarray, classes: list[str] | Task,
              rows: list[str] | None = None) -> None:
    """One fold's oof.csv, written atomically."""
    io.write_csv(path, prob_frame(ids, probs, classes, labels, rows))


def prob_columns(df: pd.DataFrame) -> list[str]:
    """The output columns of an OOF or probabilities frame in file order (= class order): `prob_<class>`...,
    or `value` (and `sigma`, a value with its uncertainty)."""
    return [c for c in df.columns if c.startswith(PREFIX)] or [c for c in df.columns if c in ("value", "sigma")]


def oof_probs(df: pd.DataFrame) -> np.ndarray:
    """(N, K) outputs of an OOF or probabilities frame."""
    return df[prob_columns(df)].to_numpy()


def oof_targets(df: pd.DataFrame) -> np.ndarray:
    """The targets of an OOF frame: (N, K) `target_<name>` rows, else the (N,) `label` column."""
    cols = [c for c in df.columns if c.startswith(TARGET)]
    return df[cols].to_numpy(np.float64) if cols else df["label"].to_numpy()


def aggregate(rows: np.ndarray | pd.Series, y: np.ndarray | None, out: np.ndarray, how: str, positive: int = 1
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Images → submission rows (data.submission_id_column): each row's outputs combined over its images
    (`how`: mean | max, predict.aggregate; two-class probabilities under max: the positive class's max, the
    other class 1 minus it) and its target (its first image's: the images of one row share it, e.g. one
    breast's cancer label). Returns (row ids in first-seen order, targets or None, outputs).

    Raises:
        UserError: an unknown `how`."""
    if how not in ("mean", "max"):
        raise UserError(f"bad value for config key 'predict.aggregate': {how!r}; choose from ['mean', 'max']")
    codes, uniq = pd.factorize(pd.Series(np.asarray(rows)).astype(str))
    g = pd.DataFrame(np.asarray(out, np.float64)).groupby(codes, sort=True)
    agg = (g.mean() if how == "mean" else g.max()).to_numpy().copy()
    if how == "max" and agg.shape[1] == 2 and np.allclose(np.asarray(out).sum(1), 1, atol=1e-4):
        agg[:, 1 - positive] = 1 - agg[:, positive]
    if y is None:
        return np.asarray(uniq), None, agg
    first = pd.Series(np.arange(len(codes))).groupby(codes, sort=True).first().to_numpy()
    return np.asarray(uniq), np.asarray(y)[first], agg


def row_level(oof: pd.DataFrame, how: str, positive: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(targets, outputs) of an OOF frame at the submission's level: aggregated over `row` when the frame
    has the column (`aggregate`), else as they are."""
    y, out = oof_targets(oof), oof_probs(oof)
    if "row" not in oof.columns:
        return y, out
    _, y, out = aggregate(oof["row"].to_numpy(), y, out, how, positive)
    return y, out


def oof_task(cfg: Any, oof: pd.DataFrame) -> Task:
    """The task an OOF frame was made under: `make_task` over the output names of its columns, or, for a
    regression head's `value`, the config's target column (regression) or grades (ordinal: data.classes,
    else the sorted labels found)."""
    names = classes_of(oof)
    if not names:
        if cfg.task == "regression":
            names = [cfg.data.label_column]
        else:
            names = [str(c) for c in cfg.data.classes] or [str(v) for v in sorted(oof["label"].unique())]
    positive = 1
    if len(names) == 2:  # the class a two-class AUC ranks: data.positive_class, by name or value
        values = [str(v) for v in cfg.data.class_values] or names
        positive = positive_index(cfg.data.positive_class, names, values)
    return make_task(cfg, names, positive)


def classes_of(df: pd.DataFrame) -> list[str]:
    """Class (or label) names in order, from the prob_<name> columns; [] for a `value` column."""
    return [c[len(PREFIX):] for c in prob_columns(df) if c.startswith(PREFIX)]


def cv_table(cfg: Any, oof: pd.DataFrame) -> tuple[pd.DataFrame, float, int]:
    """Per-fold scores of every metric of the OOF frame `oof` (every fold's rows with a `fold` column:
    comp.experiment.Experiment.oof), and the competition metric over all of them together (the CV score),
    with the number of folds found."""
    task = oof_task(cfg, oof)
    rows, how = [], cfg.predict.aggregate
    for k, part in oof.groupby("fold"):
        y, out = row_level(part, how, task.positive)
        rows.append({"fold": k, "n": len(y), **score_all(y, out, task=task, min_tpr=cfg.pauc_min_tpr)})
    table = pd.DataFrame(rows)
    cv = score(cfg.metric, *row_level(oof, how, task.positive), task=task, min_tpr=cfg.pauc_min_tpr)
    return table, cv, len(rows)
