"""The targets of tasks that are not one class per image (comp.tasks), read from the labels CSV:
regression values, multi-label 0/1 columns, soft targets (vote counts or shares per class) and several
targets each with its own classes (task=multihead, data.heads)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import UserError
from comp.tasks import head_names, head_specs


def class_task(cfg: Any) -> bool:
    """The labels are one class per image (multiclass without data.label_columns, binary, ordinal)."""
    return cfg.task in ("multiclass", "binary", "ordinal") and not cfg.data.label_columns


def target_kind(cfg: Any) -> str:
    """How the labels CSV holds the targets: class (one class label per row) | regression | multilabel (0/1
    columns) | soft (vote counts or shares per class, task multiclass with data.label_columns) | multihead
    (data.heads)."""
    if class_task(cfg):
        return "class"
    return cfg.task if cfg.task in ("regression", "multilabel", "multihead") else "soft"


def slug(text: str) -> str:
    """A class spelt as a column name: lower case, runs of other characters than a-z0-9 as one "_"
    (RSNA 2024's "Normal/Mild" -> normal_mild, its submission's column)."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).strip().lower()).strip("_")


def head_columns(cfg: Any, columns: list[str], csv: Path) -> list[str]:
    """The columns of a labels CSV with `columns` that task=multihead reads: per target of data.heads, the
    column <target> when there is one (each row's class), else its 0/1 columns <target>_<class>.

    Raises:
        UserError: a target with neither, naming the file and the columns looked for."""
    out = []
    for target, classes in head_specs(cfg):
        if target in columns:
            out.append(target)
            continue
        per_class = [f"{target}_{c}" for c in classes]
        missing = [c for c in per_class if c not in columns]
        if missing:
            raise UserError(f"{csv} has neither a column {target!r} nor the columns {per_class} (data.heads.{target}; "
                            f"missing {missing[0]!r})")
        out += per_class
    return out


def read_heads(cfg: Any, df: pd.DataFrame, csv: Path) -> tuple[pd.DataFrame, list[str]]:
    """task=multihead's targets from the labels CSV `df` (strings, `head_columns` present): a `target_<target>_
    <class>` column per output, each target's one-hot row (all 0 where the row does not label it: a blank
    <target> cell, or 0/blank in all its class columns), and `label`, the class index of each target joined
    by "," ("-" for an unlabelled one: text, so comp.data.folds stratifies on the one-hot columns).
    Returns them and the output names `<target>_<class>`.

    Raises:
        UserError: a class that is none of the target's (by name or `slug`), a class column that is not 0/1,
            or a row with two classes of one target, naming the file, row and column."""
    specs = head_specs(cfg)
    blocks, index = [], []
    for target, classes in specs:
        if target in df.columns:
            raw = df[target].astype(str).str.strip()
            lookup = {**{slug(c): k for k, c in enumerate(classes)}, **{c: k for k, c in enumerate(classes)}}
            k = pd.Series([-1 if v == "" or v.lower() in ("nan", "null") else lookup.get(v, lookup.get(slug(v), -2))
                           for v in raw], index=raw.index)
            if (k == -2).any():
                i = int(np.flatnonzero((k == -2).to_numpy())[0])
                raise UserError(f"{csv}: row {int(df.index[i]) + 2} column {target!r} has {raw.iloc[i]!r}, not one of "
                                f"its classes {classes} (data.heads.{target})")
            k = k.to_numpy(np.int64)
            m = np.zeros((len(df), len(classes)), np.float32)
            m[k >= 0, k[k >= 0]] = 1.0
        else:
            cols = [f"{target}_{c}" for c in classes]
            v = df[cols].apply(lambda c: pd.to_numeric(c.str.strip().replace("", "0"), errors="coerce"))
            m = v.to_numpy(np.float64)
            bad = ~np.isin(m, (0.0, 1.0)) | (m.sum(1, keepdims=True) > 1)
            if bad.any():
                i, j = (int(a[0]) for a in np.nonzero(bad))
                raise UserError(f"{csv}: row {int(df.index[i]) + 2} has {df[cols].iloc[i].tolist()} in {cols}; a "
                                f"target's class columns are 0/1 with at most one 1 (data.heads.{target})")
            m = m.astype(np.float32)
            k = np.where(m.sum(axis=1) > 0, m.argmax(1), -1)
        blocks.append(m)
        index.append(k)
    names = head_names(specs)
    out = pd.DataFrame(index=df.index)
    out["label"] = [",".join("-" if v < 0 else str(v) for v in row) for row in np.stack(index, 1)]
    for name, col in zip(names, np.concatenate(blocks, 1).T, strict=True):
        out[f"{TARGET}{name}"] = col
    return out, names


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
    if cfg.task == "multihead":
        return read_heads(cfg, df, csv)
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
        sums = m.sum(axis=1)
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
    if how == "aggregate" and kind == "multihead" and counts["disagreeing"]:
        raise UserError(f"{csv}: data.label_rows=aggregate does not combine task=multihead's targets; set it to "
                        f"first or refuse")
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
