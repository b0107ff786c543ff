"""Rows that are visits (`data.layout: visits`; OSIC Pulmonary Fibrosis Progression): several rows of
data.train_csv per group (data.group_column: the patient), each at a time (data.time_column: Weeks) with its
measured value (data.label_column: FVC). The test CSV gives each test group's baseline visit, and the sample
submission asks for the value at every `<group>_<time>` (its first column; OSIC: weeks -12..133 per patient).
The table is fitted by comp.train.tabular (scripts/tabular.py); no image is read (a patient's CT is not
fused with the visits).

Features of a row, all known at prediction time from the baseline alone (a group's baseline is its earliest
row, as OSIC's test.csv holds each patient's first visit):
- `since_baseline`: the row's time minus its baseline's time;
- `baseline_<col>` for each of data.baseline_columns: that column at the baseline (OSIC: FVC, Percent);
- data.tabular_columns as the baseline has them (OSIC: Age, Sex, SmokingStatus): numeric when every value
  parses as a number, else categorical.
Training rows are every visit (the baseline itself included, at since_baseline 0). Rows of one group at the
same time (OSIC's train.csv repeats a few patient-weeks) are one visit, the mean of their values (logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import resolve_path
from comp.data.tables import read_csv
from comp.errors import UserError
from comp.log import log

SEP = "_"  # a submission row id is <group>_<time>, split at its last "_" (OSIC's Patient ids hold none)


@dataclass
class Visits:
    """The visit tables: `train` (id `<group>_<time>`, group, time, label, features) and `test` (the sample's
    rows in its order: id, group, time, features); `numeric` and `categorical` name the feature columns;
    `sample` is the sample submission as read (strings)."""

    train: pd.DataFrame
    test: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    sample: pd.DataFrame


def _numbers(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Column `col` of `df` (read from `path`) as floats; UserError naming the first row that is no number."""
    num = pd.to_numeric(df[col].astype(str).str.strip(), errors="coerce")
    bad = num.isna() | ~np.isfinite(num)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path} line {i + 2}: {col}={df[col].iloc[i]!r} is not a number")
    return num.astype(np.float64)


def _baselines(df: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """One row per group: its earliest visit's time and data.baseline_columns / data.tabular_columns."""
    d = cfg.data
    first = df.sort_values(["group", "time"], kind="stable").drop_duplicates("group").set_index("group")
    out = pd.DataFrame({"baseline_time": first["time"]})
    for c in d.baseline_columns:
        out[f"baseline_{c}"] = first[c]
    for c in d.tabular_columns:
        out[c] = first[c]
    return out


def _features(rows: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """`rows` (group, time, ...) with since_baseline and their group's baseline features joined."""
    joined = rows.join(base, on="group")
    joined["since_baseline"] = joined["time"] - joined["baseline_time"]
    return joined.drop(columns="baseline_time")


def load_visits(cfg: Any) -> Visits:
    """Read data.train_csv, data.test_csv and data.sample_submission of `cfg` into the visit tables (module doc).

    Raises:
        UserError: a missing file or column, a time, label or baseline value that is no number (naming the file
            and line), a sample id that is not `<group>_<time>`, a sample group without a row in the test CSV.
    """
    d = cfg.data
    root = resolve_path(d.root)
    if not (d.group_column and d.time_column):
        raise UserError("data.layout=visits needs data.group_column (the patient) and data.time_column (the visit's "
                        "time, e.g. Weeks); configs/osic.yaml sets both")
    if not d.sample_submission or not d.test_csv:
        raise UserError("data.layout=visits needs data.test_csv (each test group's baseline row) and "
                        "data.sample_submission (the <group>_<time> rows to predict)")
    cols = list(dict.fromkeys([d.group_column, d.time_column, *d.baseline_columns, *d.tabular_columns]))
    tables = {}
    for name, rel, extra in (("train", d.train_csv, [d.label_column]), ("test", d.test_csv, [])):
        path = root / rel
        df = read_csv(path, list(dict.fromkeys([*cols, *extra])))
        df["group"] = df[d.group_column].str.strip()
        df["time"] = _numbers(df, d.time_column, path)
        for c in d.baseline_columns:
            df[c] = _numbers(df, c, path)
        if extra:
            df["label"] = _numbers(df, d.label_column, path)
        tables[name] = df
    train = tables["train"]
    repeated = train.duplicated(["group", "time"], keep=False)
    if repeated.any():
        log(f"{root / d.train_csv}: {int(train[repeated].groupby(['group', 'time']).ngroups)} {d.group_column} x "
            f"{d.time_column} visit(s) on several rows: each is one visit, the mean of its {d.label_column} values")
        mean = train.groupby(["group", "time"], sort=False)["label"].transform("mean")
        train = train.assign(label=mean).drop_duplicates(["group", "time"])
    train = _features(train[["group", "time", "label"]], _baselines(train, cfg))
    train.insert(0, "id", train["group"] + SEP + train["time"].map(lambda t: f"{t:g}"))
    sample_path = root / d.sample_submission
    sample = read_csv(sample_path, [])
    if len(sample.columns) != 3:
        raise UserError(f"{sample_path}: expected 3 columns (the <group>_<time> id, the value, its sigma as "
                        f"OSIC's Patient_Week, FVC, Confidence), got {list(sample.columns)}")
    ids = sample[sample.columns[0]].astype(str).str.strip()
    parts = ids.str.rpartition(SEP)
    times = pd.to_numeric(parts[2], errors="coerce")
    bad = (parts[1] != SEP) | times.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{sample_path} line {i + 2}: id {ids.iloc[i]!r} is not <{d.group_column}>{SEP}<"
                        f"{d.time_column}>")
    base = _baselines(tables["test"], cfg)
    unknown = ~parts[0].isin(base.index)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise UserError(f"{sample_path} line {i + 2}: {d.group_column} {parts[0].iloc[i]!r} has no row in "
                        f"{root / d.test_csv} ({int(parts[0][unknown].nunique())} such group(s)): no baseline "
                        f"to predict from")
    test = _features(pd.DataFrame({"id": ids, "group": parts[0], "time": times.astype(np.float64)}), base)
    numeric = ["since_baseline", *(f"baseline_{c}" for c in d.baseline_columns)]
    categorical = []
    for c in d.tabular_columns:
        num_tr, num_te = (pd.to_numeric(t[c].str.strip(), errors="coerce") for t in (train, test))
        if num_tr.notna().all() and num_te.notna().all():
            train[c], test[c] = num_tr.astype(np.float64), num_te.astype(np.float64)
            numeric.append(c)
        else:
            train[c], test[c] = train[c].str.strip(), test[c].str.strip()
            categorical.append(c)
    return Visits(train.reset_index(drop=True), test.reset_index(drop=True), numeric, categorical, sample)


def last_visits(frame: pd.DataFrame, n: int = 3) -> np.ndarray:
    """(N,) bool: the rows among each group's `n` latest times (Kaggle scored OSIC on each patient's last 3
    visits), for a frame with group and time columns."""
    rank = frame.groupby("group")["time"].rank(method="first", ascending=False)
    return (rank <= n).to_numpy()
