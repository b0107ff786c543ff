"""The targets of tasks that are not one class per image (comp.tasks), read from the labels CSV:
regression values, multi-label 0/1 columns and soft targets (vote counts or shares per class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import UserError


def class_task(cfg: Any) -> bool:
    """The labels are one class per image (multiclass without data.label_columns, binary, ordinal)."""
    return cfg.task in ("multiclass", "binary", "ordinal") and not cfg.data.label_columns


def target_kind(cfg: Any) -> str:
    """How the labels CSV holds the targets: class (one class label per row) | regression | multilabel (0/1
    columns) | soft (vote counts or shares per class, task multiclass with data.label_columns)."""
    if class_task(cfg):
        return "class"
    return cfg.task if cfg.task in ("regression", "multilabel") else "soft"


TARGET = "target_"  # prefix of the per-label / per-class target columns of label_columns tasks


def target_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(TARGET)]


def read_targets(cfg: Any, df: pd.DataFrame, csv: Path) -> tuple[pd.DataFrame, list[str]]:
    """The targets of a task that is not one class per image, from the labels CSV `df` (strings):
    `label` (regression: the float value; multilabel: the row's 0/1 labels joined by commas; soft
    multiclass: the class of the largest share) and, for data.label_columns, `target_<name>` columns
    (0/1 labels, or each row's shares normalised to sum 1). Returns them and the output names.

    Raises:
        UserError: a blank or non-numeric target, a label that is not 0/1, a negative share or a row of
            zero shares, naming the file, row and column.
    """
    d = cfg.data
    cols = [str(c) for c in d.label_columns] if d.label_columns else [d.label_column]
    num = {}
    for c in cols:
        v = pd.to_numeric(df[c].str.strip(), errors="coerce")
        if v.isna().any() or not np.isfinite(v).all():
            i = int(np.flatnonzero((v.isna() | ~np.isfinite(v.fillna(0))).to_numpy())[0])
            raise UserError(f"{csv}: row {int(df.index[i]) + 2} column {c!r} has {df[c].iloc[i]!r}, not a number")
        num[c] = v.astype(np.float64)
    out = pd.DataFrame(index=df.index)
    if cfg.task == "regression":
        out["label"] = num[cols[0]].astype(np.float64)
        return out, cols
    m = np.stack([num[c].to_numpy() for c in cols], 1)
    if cfg.task == "multilabel":
        bad = ~np.isin(m, (0.0, 1.0))
        if bad.any():
            i, k = (int(a[0]) for a in np.nonzero(bad))
            raise UserError(f"{csv}: row {int(df.index[i]) + 2} column {cols[k]!r} has {df[cols[k]].iloc[i]!r}; "
                            f"multi-label targets are 0 or 1")
        out["label"] = [",".join(str(int(v)) for v in row) for row in m]
    else:  # soft targets: vote counts or shares, normalised per row
        sums = m.sum(1)
        bad = (m < 0).any(1) | (sums <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{csv}: row {int(df.index[i]) + 2} has shares {m[i].tolist()} in {cols}; soft targets "
                            f"need non-negative values with a positive sum")
        m = m / sums[:, None]
        out["label"] = m.argmax(1)
    for k, c in enumerate(cols):
        out[f"{TARGET}{c}"] = m[:, k]
    return out, cols


LABEL_ROWS = ("refuse", "first", "aggregate")  # data.label_rows


def _majority(ids: pd.Series, labels: pd.Series) -> pd.Series:
    """The majority label of each id (ties: the tied label on the id's earliest row), indexed by id."""
    t = pd.DataFrame({"id": ids.to_numpy(), "label": labels.to_numpy(), "pos": np.arange(len(ids))})
    g = t.groupby(["id", "label"], sort=False).agg(n=("pos", "size"), first=("pos", "min")).reset_index()
    g = g.sort_values(["n", "first"], ascending=[False, True], kind="stable").drop_duplicates("id")
    return g.set_index("id")["label"]


def join_rows(frame: pd.DataFrame, raw: pd.DataFrame, how: str, kind: str, csv: Path
              ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per id of a labels CSV that gives an id several rows (RSNA Pneumonia: one per box; HMS 2024:
    one per labelled window of a recording, each with its own vote counts), as `data.label_rows` says:

    - `refuse`: the rows must carry the same labels (else an error naming the id and its rows);
    - `first`: the first row's labels;
    - `aggregate`, by the task's `kind`: `class` (one class label per row: multiclass, binary, ordinal) the
      majority of the rows' labels, ties to the tied label on the earliest row (the kit's class tasks take
      one class per image; soft targets come from vote columns, data.label_columns); `soft` (vote counts
      or shares per class) the rows' raw values summed then normalised (shares: their mean); `multilabel`
      (0/1 columns) the per-label maximum, a finding marked on any row (the kit's multi-label metrics and
      folds take 0/1 labels); `regression` the mean of the rows' values.

    `frame`: the CSV rows as targets (id, label[, target_<name>...][, group][, row]), indexed by the CSV's
    row (row number = index + 2); `raw`: the rows' label columns as read (strings, same index). The ids'
    first rows are kept (their index), in file order; `group` (data.group_column) must agree across an id's
    rows, `row` (the submission row) is the first row's.

    Returns the joined frame and the counts for folds.json: `ids` (ids with several rows), `rows` (the CSV
    rows of those ids) and `disagreeing` (ids whose rows' labels differ).

    Raises:
        UserError: `refuse` and an id whose rows' labels differ; an id whose rows name different patients.
    """
    ids = frame["id"]
    repeated = ids.duplicated(keep=False)
    values = raw.astype(str).apply(lambda c: c.str.strip()).agg(",".join, axis=1)
    n = values[repeated].groupby(ids[repeated], sort=False).nunique()
    counts = {"ids": int(ids[repeated].nunique()), "rows": int(repeated.sum()), "disagreeing": int((n > 1).sum())}
    if how == "refuse" and counts["disagreeing"]:
        bad = n.index[(n > 1).to_numpy()][0]
        rows = [int(i) + 2 for i in frame.index[ids == bad]]
        raise UserError(f"{csv}: id {bad!r} has different labels on its rows {rows}: "
                        f"{sorted(set(values[ids == bad]))} ({counts['disagreeing']} such id(s)); set "
                        f"data.label_rows to first (the first row's) or aggregate (the rows' labels combined)")
    if "group" in frame.columns:
        g = frame.loc[repeated, "group"].groupby(ids[repeated], sort=False).nunique()
        if (g > 1).any():
            bad = g.index[(g > 1).to_numpy()][0]
            rows = [int(i) + 2 for i in frame.index[ids == bad]]
            raise UserError(f"{csv}: id {bad!r} names different patients on its rows {rows}: "
                            f"{sorted(set(frame.loc[ids == bad, 'group']))} (data.group_column)")
    out = frame[~ids.duplicated()].copy()
    if how != "aggregate" or not counts["disagreeing"]:
        return out, counts
    key = out["id"]
    cols = target_columns(frame)
    if kind == "class":
        out["label"] = _majority(ids, frame["label"])[key].to_numpy().astype(frame["label"].dtype)
    elif kind == "regression":
        out["label"] = frame.groupby("id", sort=False)["label"].mean()[key].to_numpy()
    elif kind == "multilabel":
        m = frame.groupby("id", sort=False)[cols].max().loc[key].to_numpy()
        out[cols] = m
        out["label"] = [",".join(str(int(v)) for v in row) for row in m]
    else:  # soft: the raw votes (validated by read_targets) summed, then normalised
        votes = raw.apply(lambda c: pd.to_numeric(c.str.strip())).astype(np.float64)
        m = votes.groupby(ids, sort=False).sum().loc[key].to_numpy()
        m = m / m.sum(1, keepdims=True)
        out[cols] = m
        out["label"] = m.argmax(1)
    return out, counts


def submission_rows(cfg: Any, df: pd.DataFrame, csv: Path) -> pd.Series | None:
    """The submission row of each image of the CSV `df` (data.submission_id_column, e.g. RSNA Mammography's
    prediction_id = <patient_id>_<laterality>): its own column, else the data.submission_id_parts columns
    joined by "_"; None when the key is not set (one row per image).

    Raises:
        UserError: the CSV has neither the column nor every part, naming the file and the keys.
    """
    d = cfg.data
    if not d.submission_id_column:
        return None
    if d.submission_id_column in df.columns:
        return df[d.submission_id_column].astype(str).str.strip()
    parts = [str(p) for p in d.submission_id_parts]
    missing = [p for p in parts if p not in df.columns]
    if not parts or missing:
        raise UserError(f"{csv} has no column {d.submission_id_column!r} (data.submission_id_column)"
                        + (f" nor the parts {missing} (data.submission_id_parts)" if parts else
                           "; set data.submission_id_parts to the columns that make it"))
    return df[parts].astype(str).apply(lambda c: c.str.strip()).agg("_".join, axis=1)
