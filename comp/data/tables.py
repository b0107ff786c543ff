"""Reading a competition's CSV files as they come: a BOM, CRLF line ends, and the separator Excel writes in
a comma-decimal locale (`;`), with one error line naming the file and the columns it has."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from comp.errors import UserError


def _delimiter(path: Path) -> str:
    """The field separator of a CSV, from its header line (csv.Sniffer among , ; tab |): `,` unless the
    header holds no comma and another of them splits it (Excel in a comma-decimal locale writes `;`)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    if "," in header:
        return ","
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter
    except csv.Error:  # one column, or no separator at all
        return ","


def read_csv(path: Path, columns: list[str], comma_only: bool = False) -> pd.DataFrame:
    """Read a CSV (BOM and CRLF tolerated; `;`-, tab- or `|`-separated too, unless `comma_only`) and check
    it has `columns`, naming the file and what it has. Column names and the `columns` given are stripped.

    Raises:
        UserError: missing or unreadable file, another separator where `comma_only`, a missing column.
    """
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    sep = _delimiter(path)
    if sep != "," and comma_only:
        raise UserError(f"{path} looks {sep!r}-separated (as Excel saves in some locales); Kaggle expects "
                        f"commas: save it as CSV (comma delimited)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", sep=sep)
    except Exception as e:
        raise UserError(f"cannot read CSV {path}: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c.strip() not in df.columns]
    if missing:
        looks = f"; it looks {sep!r}-separated" if sep != "," else ""
        raise UserError(f"{path}: missing column {missing[0]!r} (columns are {list(df.columns)}){looks}")
    return df
