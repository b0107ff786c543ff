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


def dedupe(df: pd.DataFrame, id_col: str, label_cols: list[str], csv: Path) -> tuple[pd.DataFrame, pd.Series]:
    """One row per id (its first), for a labels CSV with a row per box or finding (RSNA Pneumonia's
    stage_2_train_labels.csv repeats a patient once per opacity). The rows of an id must share its label.

    Raises:
        UserError: an id whose rows disagree, naming it, its labels and its rows.
    """
    labels = df[label_cols].astype(str).apply(lambda c: c.str.strip()).agg(",".join, axis=1)
    n = labels.groupby(df[id_col]).nunique()
    if (n > 1).any():
        bad = n.index[(n > 1).to_numpy()][0]
        rows = [int(i) + 2 for i in df.index[df[id_col] == bad]]
        raise UserError(f"{csv}: id {bad!r} has different labels on its rows {rows}: "
                        f"{sorted(set(labels[df[id_col] == bad]))} (data.dedupe_ids needs them to agree)")
    df = df[~df[id_col].duplicated()]
    return df, df[id_col]


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
