"""The checks a submission passes before it is written or sent: what Kaggle would reject or score wrongly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from comp.errors import UserError

NAN_WORDS = {"nan", "na", "n/a", "null", "none", "inf", "-inf", "+inf", "infinity", "-infinity"}


def validate(df: pd.DataFrame, sample: pd.DataFrame, id_col: str, mode: str, allowed: list[Any]) -> None:
    """Refuse a submission Kaggle would reject or score wrongly: a header other than the sample's, an id
    missing, repeated or unknown, an empty or NaN value, a label outside `allowed` (mode `label`) or a
    probability outside [0, 1] (the other modes).

    Raises:
        UserError: naming the first problem and its row.
    """
    if list(df.columns) != list(sample.columns):
        raise UserError(f"submission header {list(df.columns)} is not the sample submission's {list(sample.columns)}")
    lines = df.attrs.get("lines") or list(range(2, len(df) + 2))

    def where(i: int) -> str:
        return f"submission line {lines[i]}"

    ids = df[id_col].astype(str)
    empty = ids.str.strip() == ""
    if empty.any():
        raise UserError(f"{where(int(np.flatnonzero(empty.to_numpy())[0]))} has an empty {id_col!r}")
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise UserError(f"{where(i)}: id {ids.iloc[i]!r} appears more than once")
    want = set(sample[id_col].astype(str))
    extra = ~ids.isin(want)
    if extra.any():
        i = int(np.flatnonzero(extra.to_numpy())[0])
        raise UserError(f"{where(i)}: id {ids.iloc[i]!r} is not in the sample submission "
                        f"({int(extra.sum())} such id(s))")
    missing = sorted(want - set(ids))
    if missing:
        raise UserError(f"submission lacks {len(missing)} test id(s) of the sample submission, e.g. {missing[0]!r} "
                        f"({len(df)} rows, the sample has {len(sample)})")
    allowed_s = {str(a) for a in allowed}
    for col in df.columns:
        if col == id_col:
            continue
        values = df[col].astype(str)
        stripped = values.str.strip()
        blank = (stripped == "") | (stripped.str.lower().isin(NAN_WORDS) & ~stripped.isin(allowed_s))
        if blank.any():
            i = int(np.flatnonzero(blank.to_numpy())[0])
            raise UserError(f"{where(i)}: {col}={values.iloc[i]!r} is empty or NaN")
        if mode == "label":
            ok = values.isin(allowed_s)
            if not ok.all():
                i = int(np.flatnonzero(~ok.to_numpy())[0])
                raise UserError(f"{where(i)}: {col}={values.iloc[i]!r} is not one of the classes {list(allowed)}")
        elif mode == "value":
            num = pd.to_numeric(stripped, errors="coerce")
            bad = num.isna() | ~np.isfinite(num)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise UserError(f"{where(i)}: {col}={values.iloc[i]!r} is not a finite number")
        else:
            num = pd.to_numeric(stripped, errors="coerce")
            bad = num.isna() | ~np.isfinite(num) | (num < 0) | (num > 1)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise UserError(f"{where(i)}: {col}={values.iloc[i]!r} is not a probability in [0, 1]")
