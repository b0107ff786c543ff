"""The level-2 table of stacking (comp.ensemble.stack): image-model outputs, tabular columns of the
competition's CSVs, and features of each image relative to its group (patient).

- image outputs: each experiment's OOF outputs (train) or test outputs, `e<i>_<column>`; a binary task
  keeps only P(positive) (the other column is 1 - it);
- group features, per image output f and group g (data.group_column: the patient): `f - mean_g(f)`
  (`<f>_minus_group`), its rank within the group as a fraction (pandas `rank(pct=True)`, ties averaged:
  1 = the group's highest), and the group's image count (`group_count`), as ISIC 2024's winners' "patient
  normalised" features;
- tabular columns (`--columns`, `data.tabular_columns`): numeric when every non-blank value parses as a
  number, else categorical (pandas `category` dtype over the training values, which scikit-learn's
  HistGradientBoosting splits natively with `categorical_features="from_dtype"`; a test value not seen in
  training is missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.data.tables import read_csv
from comp.errors import UserError
from comp.experiment.oof import prob_columns
from comp.tasks import Task

MAX_CATEGORIES = 255  # HistGradientBoosting's limit: a categorical column has at most max_bins (255) values


def image_columns(frame: pd.DataFrame, task: Task, prefix: str) -> pd.DataFrame:
    """The outputs of an OOF or probabilities frame as level-2 features named `<prefix>_<column>` (a
    binary task: P(positive) alone)."""
    cols = prob_columns(frame)
    if task.kind == "binary" and len(cols) == 2:
        cols = [cols[task.positive]]
    return pd.DataFrame({f"{prefix}_{c}": frame[c].to_numpy(np.float64) for c in cols})


def group_features(values: pd.DataFrame, groups: np.ndarray | pd.Series) -> pd.DataFrame:
    """(N, 2F + 1) features of each row relative to its group for the F columns of `values`: `<f>_minus_group`
    (the value minus its group's mean), `<f>_group_rank` (rank within the group / group size, ties
    averaged; pandas `rank(pct=True)`), and `group_count` (the group's rows), rows in `values`' order."""
    g = values.reset_index(drop=True).groupby(np.asarray(groups))
    out = {}
    for c in values.columns:
        out[f"{c}_minus_group"] = values[c].to_numpy() - g[c].transform("mean").to_numpy()
        out[f"{c}_group_rank"] = g[c].rank(pct=True).to_numpy()
    out["group_count"] = g[values.columns[0]].transform("size").to_numpy(np.float64)
    return pd.DataFrame(out)


def _table(path: Path, id_col: str, columns: list[str], ids: pd.Series) -> pd.DataFrame:
    """The `columns` of the CSV at `path` for the images `ids` (as strings, blanks as NaN), row for row."""
    df = read_csv(path, [id_col, *columns])
    df = df.assign(**{id_col: df[id_col].str.strip()}).drop_duplicates(id_col).set_index(id_col)
    missing = ~ids.isin(df.index)
    if missing.any():
        raise UserError(f"{path}: image {ids[missing].iloc[0]!r} has no row ({int(missing.sum())} such id(s)); "
                        f"the stack's tabular columns are read by {id_col!r}")
    return df.loc[ids.to_numpy(), columns].apply(lambda s: s.str.strip().replace("", np.nan)).reset_index(drop=True)


def tabular(cfg: Any, root: Path, columns: list[str], train_ids: pd.Series, test_ids: pd.Series | None
            ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The tabular `columns` for the training images (data.train_csv) and the test images (data.test_csv),
    typed as the module doc says, with the same categories on both sides.

    Raises:
        UserError: a column or an image missing from a CSV, test ids without data.test_csv, or a
            categorical column of more than 255 values.
    """
    if not columns:
        return pd.DataFrame(index=range(len(train_ids))), None if test_ids is None else pd.DataFrame(
            index=range(len(test_ids)))
    id_col = cfg.data.id_column
    train = _table(root / cfg.data.train_csv, id_col, columns, train_ids)
    test = None
    if test_ids is not None:
        if not cfg.data.test_csv:
            raise UserError(f"tabular columns {columns} for the test images need data.test_csv (the test "
                            f"metadata CSV, e.g. ISIC 2020's test.csv)")
        test = _table(root / cfg.data.test_csv, id_col, columns, test_ids)
    for c in columns:
        num = pd.to_numeric(train[c], errors="coerce")
        if num.notna().sum() == train[c].notna().sum() and (test is None or pd.to_numeric(
                test[c], errors="coerce").notna().sum() == test[c].notna().sum()):
            train[c] = num.astype(np.float64)
            if test is not None:
                test[c] = pd.to_numeric(test[c]).astype(np.float64)
            continue
        cats = sorted(train[c].dropna().unique())
        if len(cats) > MAX_CATEGORIES:
            raise UserError(f"tabular column {c!r} has {len(cats)} categories; HistGradientBoosting takes at most "
                            f"{MAX_CATEGORIES}: drop it or bin it")
        train[c] = pd.Categorical(train[c], categories=cats)
        if test is not None:
            test[c] = pd.Categorical(test[c].where(test[c].isin(cats)), categories=cats)
    return train, test


def level2_table(images: list[pd.DataFrame], task: Task, groups: np.ndarray | None,
                 table: pd.DataFrame) -> pd.DataFrame:
    """The level-2 features of N images: every experiment's outputs (`images`, frames of the same N rows),
    their group features when `groups` (N,) is given, and the tabular `table`."""
    outs = pd.concat([image_columns(f, task, f"e{i}") for i, f in enumerate(images)], axis=1)
    parts = [outs] + ([group_features(outs, groups)] if groups is not None else []) + [table.reset_index(drop=True)]
    return pd.concat(parts, axis=1)
