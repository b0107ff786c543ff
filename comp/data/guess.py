"""The config starter's guess (scripts/init.py, comp.data.inspect): the keys guessed with a reason each, and
the guessers every layout shares (the task and metric from the labels, repeated ids, the patient)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from comp.data.checks import CONTINUOUS_MIN, as_number

SAMPLE_RX = re.compile(r"sample.?submission", re.I)
TEST_RX = re.compile(r"test", re.I)
PATIENT_RX = re.compile(r"patient|subject|case|person|study|participant", re.I)
SKIP = ("__MACOSX",)
DICOM_EXTS = (".dcm", ".dicom")
ORDINAL_MAX = 10  # integer labels 0..K (K >= 2, at most this many) look like grades: qwk is the usual metric


@dataclass
class Guess:
    """The guessed keys ({dotted key: value}) and why each ({dotted key: reason}), plus notes."""

    values: dict[str, Any] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, why: str) -> None:
        self.values[key], self.why[key] = value, why

    def unset(self, *keys: str) -> None:
        """Take back the guesses of `keys` (a later finding replaces them)."""
        for key in keys:
            self.values.pop(key, None)
            self.why.pop(key, None)


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") or part in SKIP for part in p.relative_to(root).parts)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False, nrows=200_000)


def _group_pattern(ids: list[str]) -> tuple[str, str] | None:
    """A regex whose first group is a patient-like leading token of the ids, and why; None when the ids do not
    share one (every id its own group)."""
    split = [i.split("_") for i in ids if "_" in i]
    if len(split) < max(2, len(ids) // 3):
        return None
    fixed = []  # leading tokens every id shares (e.g. 'UID'), skipped to the first that varies
    for pos in range(min(len(s) for s in split) - 1):
        tokens = {s[pos] for s in split}
        if len(tokens) > 1:
            groups = Counter(s[pos] for s in split)
            if len(groups) < len(split) and len(groups) > 1:
                rx = "^" + "".join(re.escape(t) + "_" for t in fixed) + "([^_]+)_"
                shown = ", ".join(repr("_".join(t)) for t in split[:2])
                return rx, (f"ids like {shown} share a leading token ({len(groups)} groups for {len(split)} ids "
                            f"with '_'): taken as the patient, so a fold keeps a patient's images together")
            return None
        fixed.append(tokens.pop())
    return None


def _set_group_pattern(guess: Guess, ids: list[str]) -> None:
    """`data.group_pattern` when the ids share a patient-like token; the ids it does not match (chest X-ray's
    NORMAL images are IM-xxxx-yyyy beside personN_...) are then each a patient of their own, said in
    `data.group_unmatched: own` (the kit refuses a pattern that leaves ids unmatched unless told so)."""
    found = _group_pattern(ids)
    if not found:
        return
    guess.set("data.group_pattern", *found)
    rx = re.compile(found[0])
    missed = [i for i in ids if not rx.search(i)]
    if missed:
        guess.set("data.group_unmatched", "own", f"{len(missed)} of {len(ids)} ids do not match the pattern (e.g. "
                  f"{missed[0]!r}): each of them is taken as a patient of its own; set a pattern that covers them "
                  f"when their names hold the patient too")


def _metric(values: list[str], guess: Guess) -> None:
    distinct = sorted(set(values))
    numbers = [as_number(v) for v in distinct]
    if (len(distinct) > CONTINUOUS_MIN and all(v is not None for v in numbers)
            and any(v != int(v) for v in numbers if v is not None)):
        guess.set("task", "regression", f"the labels are {len(distinct)} distinct numbers such as "
                  f"{next(d for d, v in zip(distinct, numbers, strict=True) if v != int(v))!r}: measured values")
        guess.set("metric", "mae", "a guess for a measured value (RSNA bone age: mean absolute error); set the "
                  "competition's metric (mae, rmse, r2)")
        return
    if all(v.lstrip("-").isdigit() for v in distinct):
        ints = sorted(int(v) for v in distinct)
        if len(ints) > CONTINUOUS_MIN and ints != list(range(len(ints))):
            guess.notes.append(f"the labels are {len(ints)} distinct integers from {ints[0]} to {ints[-1]}, taken as "
                               f"classes: if they are measured values (months, a count, a score), set task: "
                               f"regression and metric: mae or rmse")
        if ints == list(range(len(ints))) and 3 <= len(ints) <= ORDINAL_MAX:
            guess.set("metric", "qwk", f"the labels are the integers 0..{ints[-1]}: grades, scored by quadratic "
                      f"weighted kappa in APTOS/DR-style competitions (check the competition's Evaluation page)")
            return
    guess.set("metric", "accuracy" if len(distinct) != 2 else "f1_macro",
              "a guess: set the competition's metric (accuracy, balanced_accuracy, f1_macro, f1_weighted, qwk, auc)")


def _set_label_rows(guess: Guess, ids: pd.Series, labels: pd.Series, csv: str) -> None:
    """An id on several rows of the labels CSV: data.dedupe_ids when its rows agree on the label, else
    data.label_rows=aggregate (comp.data.targets.join_rows); nothing when every id is on one row."""
    several = ids.duplicated(keep=False)
    if not several.any():
        return
    n = int(ids[several].nunique())
    differ = int((labels[several].groupby(ids[several]).nunique() > 1).sum())
    if differ:
        guess.set("data.label_rows", "aggregate", f"{n} id(s) on several rows of {csv}, {differ} with different "
                  f"labels: each id one image, its rows' labels combined (first: the first row's; refuse)")
    else:
        guess.set("data.dedupe_ids", True, f"{n} id(s) on several rows of {csv}, their labels agreeing: one "
                  f"image each")


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()
