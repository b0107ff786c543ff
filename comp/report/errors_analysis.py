"""Error analysis on the out-of-fold predictions of every fold, and the data's own problems, for every
task (comp.tasks; a list of class names stands for a multiclass softmax over them).

Tables (pandas DataFrames, written as CSV by `write_tables`):
- `top_losses`: every OOF image by how wrong it is, worst first: classes: the cross-entropy -log p(truth)
  (soft targets: against the target shares); multi-label: the largest per-label binary cross-entropy
  (which label, and its probability); a regression head: the absolute error;
- `confused_pairs` (classes only): (truth, prediction) pairs of the OOF confusion matrix off its diagonal,
  most frequent first;
- `group_metrics`: per patient (the `group` column of folds.csv): images, errors, accuracy, mean loss (a
  regression head: MAE, RMSE and the mean signed error);
- `label_issues` (class probabilities, multi-label): likely label errors by confident learning
  (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021)
  with cleanlab's `find_label_issues` (multi-label: cleanlab.multilabel_classification's), the authors' maintained
  implementation. It needs out-of-sample probabilities, which the OOF are by construction; a regression
  head has none, so no table;
- `duplicates`: exact and near-duplicate images within and across train and test, by perceptual hash
  (imagehash's pHash, 64 bits), with both labels side by side: APTOS 2019 had near-copies graded differently.
  Each hash candidate is confirmed on the pixels, flat images never reported (comp.report.image_duplicates).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from comp.errors import UserError
from comp.experiment.oof import oof_probs, oof_targets
from comp.io import write_csv
from comp.report.image_duplicates import (  # noqa: F401  (the duplicates table's functions, here since the start)
    FLAT_STD,
    MIN_CORRELATION,
    THUMB,
    confirm,
    find_duplicates,
    fingerprints,
    near_pairs,
    phash_bits,
    thumbnail,
)
from comp.tasks import Task

EPS = 1e-7  # probability floor of the log loss (scikit-learn's log_loss clips likewise)


def as_task(classes: list[str] | Task) -> Task:
    """`classes` when a Task, else a multiclass softmax over the class names (the kit's first task)."""
    return classes if isinstance(classes, Task) else Task(kind="multiclass", names=list(classes), head="softmax")


def _named(labels: np.ndarray, classes: list[str]) -> list[str]:
    return [classes[int(i)] for i in labels]


def _joined(rows: np.ndarray, names: list[str]) -> list[str]:
    """Each 0/1 row as the `|`-joined names of its set labels ("" for none)."""
    return ["|".join(n for n, on in zip(names, r, strict=True) if on) for r in rows]


def _truth(task: Task, y: np.ndarray) -> np.ndarray:
    return y.argmax(1) if task.soft else y.astype(np.int64)


def label_bce(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(N, L) per-label binary cross-entropy -[t log p + (1-t) log(1-p)] of 0/1 (or soft) targets `y` and
    probabilities `p`, clipped at EPS as scikit-learn's log_loss."""
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def top_losses(oof: pd.DataFrame, classes: list[str] | Task) -> pd.DataFrame:
    """Every OOF row by how wrong it is, worst first (ties keep the OOF order).

    Args:
        oof: id, the targets and outputs of comp.experiment.oof, and optionally fold, group.
        classes: the Task, or the class names of a multiclass softmax.
    Returns:
        id, fold, group (when present), then: classes: label, pred (class names; soft targets: the
        largest share), p_label, p_pred, loss (-log p(label); soft: -sum_c y_c log p_c), sorted by loss;
        multi-label: label, pred (`|`-joined labels set / predicted at 0.5), worst_label, y_worst, p_worst,
        loss (that label's BCE, the largest), mean_bce, sorted by loss; a regression head: label, pred
        (value; ordinal: grade names, and `value`), error (prediction - truth), abs_error, sorted by abs_error.
    """
    task = as_task(classes)
    y, p = oof_targets(oof), oof_probs(oof).astype(np.float64)
    out = oof[[c for c in ("id", "fold", "group") if c in oof.columns]].copy()
    key = "loss"
    if task.kind == "multihead":  # the sum over labelled heads of -log p(true class)
        named, preds, loss = [], [], np.zeros(len(y))
        for (target, _), s in zip(task.heads, task.slices(), strict=True):
            t, q = y[:, s], p[:, s]
            classes = [n[len(target) + 1:] for n in task.names[s]]
            seen = t.sum(1) > 0
            loss += np.where(seen, -np.log(np.clip((t * q).sum(1), EPS, 1.0)), 0.0)
            named.append([f"{target}={classes[c]}" if ok else "" for c, ok in zip(t.argmax(1), seen, strict=True)])
            preds.append([f"{target}={classes[c]}" for c in q.argmax(1)])
        out["label"] = [" ".join(v for v in row if v) for row in zip(*named, strict=True)]
        out["pred"] = [" ".join(row) for row in zip(*preds, strict=True)]
        out["loss"] = loss
    elif task.kind == "multilabel":
        t = (y >= 0.5).astype(int)
        bce = label_bce(y, p)
        worst = bce.argmax(1)
        rows = np.arange(len(y))
        out["label"], out["pred"] = _joined(t, task.names), _joined(p >= 0.5, task.names)
        out["worst_label"], out["y_worst"], out["p_worst"] = _named(worst, task.names), y[rows, worst], p[rows, worst]
        out["loss"], out["mean_bce"] = bce[rows, worst], bce.mean(1)
    elif task.head == "regression":
        v = task.values(p)
        if task.kind == "ordinal":
            out["label"], out["pred"], out["value"] = _named(y, task.names), _named(task.decode(p), task.names), v
        else:
            out["label"], out["pred"] = y.astype(np.float64), v
        out["error"] = v - y.astype(np.float64)
        out["abs_error"] = np.abs(out["error"])
        key = "abs_error"
    else:
        cls = _truth(task, y)
        p_label = p[np.arange(len(cls)), cls]
        out["label"], out["pred"] = _named(cls, task.names), _named(p.argmax(1), task.names)
        out["p_label"], out["p_pred"] = p_label, p.max(1)
        logp = np.log(np.clip(p, EPS, 1.0))
        out["loss"] = -(y * logp).sum(1) if task.soft else -np.log(np.clip(p_label, EPS, 1.0))
    return out.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)


def confused_pairs(oof: pd.DataFrame, classes: list[str] | Task) -> pd.DataFrame:
    """The off-diagonal cells of the OOF confusion matrix (Task.decode predictions; soft targets: the
    largest share as truth) that hold any image.

    Returns:
        label, pred, count, share (count / images of that label); most frequent first, then by share.
    Raises:
        UserError: a task without classes (multi-label, regression).
    """
    task = as_task(classes)
    if not task.has_classes:
        raise UserError(f"confused class pairs need classes; task={task.kind} has none")
    y, pred = _truth(task, oof_targets(oof)), task.decode(oof_probs(oof).astype(np.float64))
    c = len(task.names)
    counts = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    rows = [{"label": task.names[t], "pred": task.names[q], "count": int(counts[t, q]),
             "share": counts[t, q] / counts[t].sum()}
            for t in range(c) for q in range(c) if t != q and counts[t, q] > 0]
    table = pd.DataFrame(rows, columns=["label", "pred", "count", "share"])
    return table.sort_values(["count", "share"], ascending=False, kind="stable").reset_index(drop=True)


def group_metrics(oof: pd.DataFrame, classes: list[str] | Task) -> pd.DataFrame:
    """Per group (patient), worst first.

    Args:
        oof: as for `top_losses`, with a `group` column (folds.csv's).
    Returns:
        classes and multi-label: group, n, errors (multi-label: any label wrong at 0.5), accuracy,
        log_loss (multi-label: the mean per-label BCE), labels (those present, `|`-joined), worst accuracy
        first; a regression: group, n, mae, rmse, bias (mean prediction - truth), largest MAE first (an
        ordinal regression head: errors and accuracy of the rounded grade too).
    """
    if "group" not in oof.columns:
        raise UserError("the OOF predictions have no group column (folds.csv's); retrain with this kit")
    task = as_task(classes)
    losses = top_losses(oof, task)
    g = losses.groupby("group", sort=False)
    if task.head == "regression":
        table = pd.DataFrame({"n": g.size(), "mae": g["abs_error"].mean(),
                              "rmse": g["error"].agg(lambda e: float(np.sqrt((e ** 2).mean()))),
                              "bias": g["error"].mean()})
        cols = ["group", "n", "mae", "rmse", "bias"]
        if task.kind == "ordinal":
            wrong = (losses["label"] != losses["pred"]).groupby(losses["group"], sort=False).sum()
            table["errors"] = wrong.astype(int)
            table["accuracy"] = 1 - table["errors"] / table["n"]
            cols += ["errors", "accuracy"]
        return table.reset_index()[cols].sort_values("mae", ascending=False, kind="stable").reset_index(drop=True)
    losses["wrong"] = losses["label"] != losses["pred"]
    g = losses.groupby("group", sort=False)
    per_image = "mean_bce" if task.kind == "multilabel" else "loss"
    table = pd.DataFrame({"n": g.size(), "errors": g["wrong"].sum().astype(int), "log_loss": g[per_image].mean(),
                          "labels": g["label"].agg(lambda s: "|".join(sorted({x for v in s for x in v.split("|")
                                                                               if x})))})
    table["accuracy"] = 1 - table["errors"] / table["n"]
    table = table.reset_index()[["group", "n", "errors", "accuracy", "log_loss", "labels"]]
    return table.sort_values(["accuracy", "log_loss"], ascending=[True, False], kind="stable").reset_index(drop=True)


def label_issues(oof: pd.DataFrame, classes: list[str] | Task) -> pd.DataFrame:
    """Likely label errors: cleanlab's `find_label_issues` (confident learning, prune_by_noise_rate) on
    the OOF probabilities, most suspicious first (lowest self-confidence p(given label)). Soft targets:
    the largest share is the given label. Multi-label: cleanlab.multilabel_classification.filter's, the labels
    set per image.

    Returns:
        id, fold (when present), label (given), suggested (the argmax class; multi-label: the labels
        predicted at 0.5), p_label, p_suggested (multi-label: the given labels' lowest probability of
        being right, and the largest probability of a label not given).
    Raises:
        UserError: a regression head (no class probabilities to learn from), naming the task.
    """
    from cleanlab.filter import find_label_issues

    task = as_task(classes)
    if task.head == "regression":
        raise UserError(f"label issues (cleanlab, confident learning) need class probabilities; "
                        f"task={task.kind} with a regression head has none")
    y, p = oof_targets(oof), oof_probs(oof).astype(np.float64)
    cols = ["id", "fold", "label", "suggested", "p_label", "p_suggested"]
    if task.kind == "multilabel":
        t = (y >= 0.5).astype(int)
        if len(t) < 2 * t.shape[1] or (t.sum(0) == 0).any() or (t.sum(0) == len(t)).any():
            return pd.DataFrame(columns=cols)  # cleanlab needs each label both set and unset
        given = [list(np.flatnonzero(r)) for r in t]
        from cleanlab.multilabel_classification.filter import find_label_issues as find_multilabel

        idx = find_multilabel(given, p, return_indices_ranked_by="self_confidence", n_jobs=1)
        right = np.where(t[idx] == 1, p[idx], 1 - p[idx])
        label, suggested = _joined(t[idx], task.names), _joined(p[idx] >= 0.5, task.names)
        p_label, p_suggested = right.min(1), np.where(t[idx] == 0, p[idx], 0.0).max(1)
    else:
        y = _truth(task, y)
        if len(np.unique(y)) < 2 or len(y) < len(task.names):
            return pd.DataFrame(columns=cols)
        p = p / p.sum(1, keepdims=True)  # cleanlab checks each row sums to 1; float32 CSV round-trips drift
        idx = find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
        label, suggested = _named(y[idx], task.names), _named(p[idx].argmax(1), task.names)
        p_label, p_suggested = p[idx, y[idx]], p[idx].max(1)
    sub = oof.iloc[idx]
    out = pd.DataFrame({"id": sub["id"].to_numpy()})
    if "fold" in oof.columns:
        out["fold"] = sub["fold"].to_numpy()
    out["label"], out["suggested"], out["p_label"], out["p_suggested"] = label, suggested, p_label, p_suggested
    return out


def shown_labels(task: Task, targets: np.ndarray) -> list[str]:
    """Each image's targets as one string: the class name (-1: ""), the `|`-joined labels set (multi-label),
    the largest share's class (soft targets), or the value (regression; NaN: "")."""
    t = np.asarray(targets)
    if t.ndim == 2:  # (multihead: the `|`-joined <target>_<class> of each labelled target)
        return _named(t.argmax(1), task.names) if task.soft else _joined(t >= 0.5, task.names)
    if task.kind == "regression":
        return ["" if np.isnan(v) else f"{v:g}" for v in t.astype(np.float64)]
    return [task.names[int(v)] if v >= 0 else "" for v in t]


def duplicate_items(train: pd.DataFrame, test: pd.DataFrame, task: Task | None = None,
                    train_targets: np.ndarray | None = None) -> pd.DataFrame:
    """The `items` table of `find_duplicates` from a competition's train and test tables: with `task` and
    the (N, ...) `train_targets` (comp.data.competition.Competition.targets), labels as `shown_labels`
    (test labels, when the test table has a `label` column of a class or regression task, likewise)."""
    if task is None:
        tr = train[["id", "path", "label"]].assign(set="train")
        te = test.assign(label=test["label"] if "label" in test.columns else -1)[["id", "path", "label"]]
        return pd.concat([tr, te.assign(set="test")], ignore_index=True)
    tr = train[["id", "path"]].assign(label=shown_labels(task, train_targets), set="train")
    te_labels = [""] * len(test)
    if "label" in test.columns and not task.dense_targets:
        te_labels = shown_labels(task, test["label"].to_numpy())
    te = test[["id", "path"]].assign(label=te_labels, set="test")
    return pd.concat([tr, te], ignore_index=True)


def analyse(oof: pd.DataFrame, classes: list[str] | Task, items: pd.DataFrame | None = None,
            load: Callable[[str], np.ndarray] | None = None) -> dict[str, pd.DataFrame]:
    """Every table of this module that applies to the task, by name (`confused_pairs` where there are
    classes, `label_issues` where there are probabilities); `duplicates` only when `items` and `load` are
    given."""
    task = as_task(classes)
    tables = {"top_losses": top_losses(oof, task)}
    if task.has_classes:
        tables["confused_pairs"] = confused_pairs(oof, task)
    tables["group_metrics"] = group_metrics(oof, task)
    if task.head not in ("regression", "multihead"):  # (confident learning of one class per image)
        tables["label_issues"] = label_issues(oof, task)
    if items is not None and load is not None:
        tables["duplicates"] = find_duplicates(items, load, task.names)
    return tables


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    """Each table as `<out>/<name>.csv`, atomically; returns the paths."""
    return [write_csv(out / f"{name}.csv", df) for name, df in tables.items()]
