"""Checks and cuts of the tables a new user's data needs: a class that is a slip of another (`Fundus` beside
`fundus`), smoke mode's few images per class (`data.limit`), the images `data.exclude` leaves out, and the
sample submission looked at before any slow work."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import resolve_path
from comp.data.layouts import matched_folders
from comp.data.tables import read_csv
from comp.errors import UserError
from comp.log import log
from comp.tasks import head_specs


def _edits(a: str, b: str) -> int:
    """Characters changed between `a` and `b`: the sum over difflib's non-equal opcodes (close to the
    Levenshtein distance for the one- or two-letter slips this is used to find)."""
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


def near_duplicate(name: str, others: list[str]) -> str | None:
    """The first of `others` that `name` looks like a slip of: the same but for case, spaces, `_` or `-`,
    or 1-2 letters apart (at most a third of the shorter name, so 'hem' and 'all' stay apart). Integer
    names (grades 0..4) are never taken for slips."""
    def norm(t: str) -> str:
        return re.sub(r"[\s_\-]+", " ", t).strip().casefold()

    if name.lstrip("-").isdigit():
        return None
    for o in others:
        if o == name or o.lstrip("-").isdigit():
            continue
        if norm(o) == norm(name) or _edits(name, o) <= min(2, min(len(name), len(o)) // 3):
            return o
    return None


CONTINUOUS_MIN = 10  # distinct numeric labels, some fractional, beyond which a class task is taken for a slip


def as_number(text: str) -> float | None:
    """`text` as a finite float, or None (not a number, NaN, infinite)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def check_spelling(labels: pd.Series, classes: list[str], n_folds: int, rows: Callable[[list[int]], str]) -> None:
    """Without data.classes, a class that looks like a slip of a bigger one ('fundus' beside 'Fundus')
    would train as a class of its own: an error naming its rows when it has fewer than `n_folds` images,
    else a warning (it may be real: set data.classes to say so). Numeric class names are not checked for
    slips; more than CONTINUOUS_MIN of them, some fractional, are measured values (bone age in months)
    given to a class task: refused, naming task: regression.

    Raises:
        UserError: a rare slip (naming its rows), or continuous values as classes."""
    numbers = [as_number(c) for c in classes]
    if all(v is not None for v in numbers):  # numbers are not spelt: '80.4' is no slip of '80.3'
        fractional = [c for c, v in zip(classes, numbers, strict=True) if v != int(v)]
        if fractional and len(classes) > CONTINUOUS_MIN:
            raise UserError(f"the labels look like measured values, not classes: {len(classes)} distinct numbers "
                            f"such as {fractional[0]!r}; set task: regression (metric: mae or rmse), or list the "
                            f"classes in data.classes to train them as classes")
        return
    counts = labels.value_counts()
    by_size = sorted(range(len(classes)), key=lambda c: -int(counts.get(c, 0)))
    for c in reversed(by_size):
        n = int(counts.get(c, 0))
        bigger = [classes[k] for k in by_size if int(counts.get(k, 0)) >= n and k != c]
        twin = near_duplicate(classes[c], bigger)
        if twin is None:
            continue
        idx = [int(i) for i in (labels.to_numpy() == c).nonzero()[0]]
        what = (f"class {classes[c]!r} ({n} image(s): {rows(idx)}) looks like a slip of {twin!r} "
                f"({int(counts[classes.index(twin)])} images): did you mean {twin!r}?")
        if n < n_folds:
            raise UserError(f"{what} Fix the label, or list the real classes in data.classes")
        log(f"warning: {what} If both are real classes, list them in data.classes")


def limit_images(train: pd.DataFrame, test: pd.DataFrame, n: int, num_classes: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Smoke mode (`data.limit`): `n` training rows per label, drawn with a fixed seed (the same rows every
    run) and kept in table order, and the first `n` x `num_classes` test rows; `n` = 0: both unchanged."""
    if n <= 0:
        return train, test
    by = train["label"]
    if by.dtype.kind == "f":  # a regression target: n images from each of 5 quantile bins
        by = pd.qcut(by.rank(method="first"), min(5, len(by)), labels=False)
    picked = train.assign(_by=by).sample(frac=1.0, random_state=0).groupby("_by", sort=False).head(n).index
    return train.loc[sorted(picked)].reset_index(drop=True), test.head(n * num_classes).reset_index(drop=True)


def long_rows(row_ids: pd.Series, ids: list[str], labels: list[str], sep: str, what: str
              ) -> tuple[list[int], list[int]]:
    """Each long-form row id `<id><sep><label>` (RSNA 2022: `1.2.826.0.1.3680043.8.498.10_C1`) split into the
    index of its id in `ids` and of its label in `labels`, matched whole, so ids and labels may hold `sep`
    themselves (`..._patient_overall`) and ids may hold dots.

    Raises:
        UserError: a row id that is no id of `ids` joined to a label (the first named, with their count).
    """
    index = {f"{i}{sep}{lab}": (n, k) for n, i in enumerate(ids) for k, lab in enumerate(labels)}
    got = row_ids.astype(str).str.strip().map(index)
    bad = got.isna()
    if bad.any():
        raise UserError(f"{what}: row id {row_ids[bad].iloc[0]!r} is not a test id and a label {labels} joined "
                        f"by {sep!r} (predict.long_separator; {int(bad.sum())} such row(s))")
    return [n for n, _ in got], [k for _, k in got]


def long_labels(cfg: Any) -> list[str]:
    """What the second part of a long row id names (predict.shape=long): a label of data.label_columns (RSNA
    2022: C1, patient_overall), or with task=multihead a target of data.heads (RSNA 2024:
    spinal_canal_stenosis_l1_l2).

    Raises:
        UserError: neither is set."""
    if cfg.task == "multihead":
        return [t for t, _ in head_specs(cfg)]
    if not cfg.data.label_columns:
        raise UserError("predict.shape=long writes one row per label of data.label_columns; set them (or "
                        "predict.shape=wide)")
    return [str(c) for c in cfg.data.label_columns]


def long_outputs(cfg: Any, columns: list[str], what: str) -> np.ndarray:
    """predict.shape=long: (L, V) the output index each of the sample's V value columns (`columns` after its
    row id) takes on a row of label L (`long_labels`): one value column, the label's own output; with
    task=multihead each value column is a class of every target (RSNA 2024: normal_mild, moderate, severe),
    the output `<target>_<class>`.

    Raises:
        UserError: a sample of other than two columns (one target per row), or a value column that is not a
            class of some target, naming the file (`what`) and the column."""
    values = list(columns[1:])
    if cfg.task != "multihead":
        if len(values) != 1:
            raise UserError(f"{what}: predict.shape=long needs a row id column and one value column; its header is "
                            f"{list(columns)}")
        return np.arange(len(long_labels(cfg)))[:, None]
    if not values:
        raise UserError(f"{what}: predict.shape=long needs a row id column and the classes' columns; its header "
                        f"is {list(columns)}")
    out, start = [], 0
    for target, classes in head_specs(cfg):
        missing = [v for v in values if v not in classes]
        if missing:
            raise UserError(f"{what}: column {missing[0]!r} is not a class of the target {target!r} {classes} "
                            f"(data.heads)")
        out.append([start + classes.index(v) for v in values])
        start += len(classes)
    return np.asarray(out, dtype=np.int64)


def long_example(values: pd.Series, ids: set[str], labels: list[str], sep: str) -> tuple[str, str, str] | None:
    """(row id, id, label) of the first of `values` (at most 50 looked at) that reads as `<id><sep><label>`
    with an id of `ids`: a sample submission in long form; None when none does."""
    for v in values.astype(str).str.strip().head(50):
        for lab in labels:
            tail = f"{sep}{lab}"
            if v.endswith(tail) and v[: -len(tail)] in ids:
                return v, v[: -len(tail)], lab
    return None


def long_hint(path: Path, example: tuple[str, str, str]) -> str:
    """The error line for a long-form sample read as wide: what its rows are and the key to set."""
    row, i, lab = example
    return (f"sample submission {path} is in long form, one row per id and label ({row!r} = id {i!r} + label "
            f"{lab!r}): set predict.shape=long to write it from the per-label outputs")


def check_sample_submission(cfg: Any, root: Path, test: pd.DataFrame) -> None:
    """prepare's early look at `data.sample_submission` (predict writes in its shape): it exists, is a
    comma-separated CSV with `data.id_column` and rows, and each of its ids has a test image; with
    predict.shape=long its first column's row ids are each a test id joined to a label (`long_rows`), and a
    long sample read as wide is said to be one (`long_hint`).

    Raises:
        UserError: one line naming the file and what is wrong (a few of the ids without an image).
    """
    d = cfg.data
    if not d.sample_submission:
        return
    path = root / d.sample_submission
    if not path.is_file():
        raise UserError(f"sample submission not found: {path} (data.sample_submission; set it to '' when the "
                        f"competition has none)")
    if d.layout == "siim_covid":  # "<study>_study" and "<image>_image" rows
        from comp.data.siim_covid import check_sample

        check_sample(path, read_csv(path, [d.id_column], comma_only=True)[d.id_column], test)
        return
    test_ids = test["row" if "row" in test.columns else "id"].astype(str)
    labels = [str(c) for c in d.label_columns or d.classes] if cfg.task != "multihead" else long_labels(cfg)
    head = read_csv(path, [], comma_only=True)
    if cfg.predict.shape == "long":
        labels = long_labels(cfg)
        long_outputs(cfg, list(head.columns), f"sample submission {path}")
        long_rows(head[head.columns[0]], list(dict.fromkeys(test_ids)), labels, cfg.predict.long_separator,
                  f"sample submission {path}")
        return
    col = d.submission_id_column or d.id_column  # a row may group several images (data.submission_id_column)
    if col not in head.columns or not head[col].str.strip().isin(set(test_ids)).any():
        example = long_example(head[head.columns[0]], set(test_ids), labels, cfg.predict.long_separator)
        if example:
            raise UserError(long_hint(path, example))
        read_csv(path, [col], comma_only=True)  # the missing column, named
    ids = head[col].str.strip()
    if ids.empty:
        raise UserError(f"sample submission {path} has a header but no rows")
    lost = ~ids.isin(set(test_ids))
    if lost.any():
        shown = ", ".join(repr(i) for i in ids[lost].iloc[:3])
        raise UserError(f"sample submission {path}: {int(lost.sum())} of {len(ids)} id(s) have no test image "
                        f"(data.test_images, data.test_csv), e.g. {shown}")


def two_classes(labels: pd.Series, classes: list[str], when: str = "") -> None:
    if labels.nunique() < 2:
        raise UserError(f"the training labels hold one class only ({classes[int(labels.iloc[0])]!r}){when}; "
                        f"a classifier needs two or more (check data.label_column)")


def excluded_ids(cfg: Any) -> list[str]:
    """The ids `data.exclude` names: its list, or the `id` (else `data.id_column`) column of the CSV it
    points at (a config path: absolute, or relative to the repository root)."""
    value = cfg.data.exclude
    if not isinstance(value, str):
        return [str(v).strip() for v in value]
    if not value:
        return []
    path = resolve_path(value)
    head = read_csv(path, [])
    col = "id" if "id" in head.columns else cfg.data.id_column
    return read_csv(path, [col])[col].str.strip().tolist()


def exclude(train: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """`train` without the rows of `ids` (logged when there are any); an id that is not in `train` is an
    error, so a typo cannot leave an image in silently."""
    if not ids:
        return train
    known = set(train["id"])
    unknown = [i for i in dict.fromkeys(ids) if i not in known]
    if unknown:
        raise UserError(f"data.exclude: {unknown[0]!r} is not a training image id ({len(unknown)} such id(s); "
                        f"test images are never excluded)")
    drop = train["id"].isin(ids)
    shown = ", ".join(train.loc[drop, "id"].head(5))
    log(f"data.exclude: {int(drop.sum())} of {len(train)} training images left out ({shown}"
        f"{', ...' if drop.sum() > 5 else ''})")
    return train[~drop].copy()


def not_long(cfg: Any, root: Path, sample: Path, col: str) -> None:
    """A sample submission without data.id_column whose rows read as `<test file name>_<label>`: refused
    saying it is in long form (predict.shape=long), rather than as a missing column."""
    head = read_csv(sample, [])
    if col in head.columns or head.empty:
        return
    names = {p.stem for _, f in matched_folders(root, list(cfg.data.test_images)) for p in f.rglob("*")}
    labels = [str(c) for c in cfg.data.label_columns or cfg.data.classes]
    example = long_example(head[head.columns[0]], names, labels, cfg.predict.long_separator)
    if example:
        raise UserError(long_hint(sample, example))
