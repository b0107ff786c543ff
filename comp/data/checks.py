"""Checks and cuts of the training table that a new user's data needs: a class that is a slip of another
(`Fundus` beside `fundus`), and smoke mode's few images per class (`data.limit`)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

import pandas as pd

from comp.errors import UserError
from comp.log import log


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


def check_spelling(labels: pd.Series, classes: list[str], n_folds: int, rows: Callable[[list[int]], str]) -> None:
    """Without data.classes, a class that looks like a slip of a bigger one ('fundus' beside 'Fundus')
    would train as a class of its own: an error naming its rows when it has fewer than `n_folds` images,
    else a warning (it may be real: set data.classes to say so)."""
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
    picked = train.sample(frac=1.0, random_state=0).groupby("label", sort=False).head(n).index
    return train.loc[sorted(picked)].reset_index(drop=True), test.head(n * num_classes).reset_index(drop=True)
