"""A competition download → one table for training (id, path, label, group) and one for test (id, path).

Two layout families cover the competitions this kit targets (the download read as it comes):
- `csv`: a labels CSV plus image folders, files named `<id><image_ext>` (APTOS 2019, DR 2015, the demo);
- `folders`: one sub-folder per class under each training folder (chest X-ray, C-NMC 2019).
The test table comes from `data.test_csv`, else the sample submission, else the images under
`data.test_images` (by class sub-folder when there are some: a labelled held-out set, as in chest X-ray).

Folder entries are globs, matched shallowest first. macOS archive debris (`__MACOSX/`, `._*` files) is
skipped, and a byte-identical copy of an image already found in the same class (the chest X-ray zip holds
its tree twice, `chest_xray/` and `chest_xray/chest_xray/`) is dropped, its contents compared, not its
size; a different file at the same place of the doubled tree is an error naming both files. In the `csv`
layout an id whose file name is in two matched folders with other contents is an error naming both.

Ids in the `folders` layout are the file names without extension (`person1_bacteria_1`), as the
competitions name their images. Where a layout repeats a name, there is no such unique name, and there
is no submission to say otherwise, so every id becomes the shortest tail of its path that is unique
(`unique_ids`): `<class>/<name>` when class folders reuse a counter (`NORMAL/1.png`, `PNEUMONIA/1.png`),
`<split>/<class>/<name>` when folders read together do (`train/NORMAL/1.png`, `val/NORMAL/1.png`;
`fold_0/all/1.bmp`, `fold_1/all/1.bmp`), the extension kept when only it differs (`1.png`, `1.jpg`); a
scanned test folder's ids also stay apart from the training ids. `data.group_pattern` is matched
(re.search) against that id.

Labels become integers 0..C-1 in the order of `data.classes`; `label_values` keeps the competition's
own spelling of each class (`data.class_values`, else the names) so the submission is written in its
encoding. A label in a CSV may be spelt either way.
"""

from __future__ import annotations

import filecmp
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import path_hint, resolve_path
from comp.data.checks import (  # noqa: F401  (check_sample_submission: prepare calls it from here)
    check_sample_submission,
    check_spelling,
    exclude,
    excluded_ids,
    limit_images,
    two_classes,
)
from comp.data.tables import read_csv  # noqa: F401  (the CSV reader of every table, here since the start)
from comp.data.targets import class_task, dedupe, read_targets, submission_rows, target_columns
from comp.errors import UserError
from comp.log import log

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}
MISSING_WORDS = {"nan", "null", "#n/a"}  # a missing label as pandas (astype(str)), JSON/SQL or Excel spell it


@dataclass
class Problem:
    """One unusable image: kind is missing | empty | truncated | corrupt."""

    kind: str
    path: str
    detail: str = ""


@dataclass
class Competition:
    train: pd.DataFrame  # id, path, label, group (+ target_<name> columns for label_columns tasks)
    test: pd.DataFrame  # id, path (and label when the held-out labels are known)
    classes: list[str]  # output names (comp.tasks.Task.names): classes, index = label; labels; target column
    label_values: list[Any]  # the competition's own value for each class (int or str)
    root: Path
    problems: list[Problem] = field(default_factory=list)  # ids without an image (load_competition(strict=False))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def targets(self, df: pd.DataFrame) -> np.ndarray:
        """The training targets of the rows of `df` (a slice of `train`, or of the folds table) as the
        dataset yields them (comp.tasks): (N, K) float32 target rows when the task reads
        data.label_columns, (N,) float32 values (regression), else (N,) int64 class indices."""
        cols = target_columns(df)
        if cols:
            return df[cols].to_numpy(np.float32)
        if df["label"].dtype.kind == "f":
            return df["label"].to_numpy(np.float32)
        return df["label"].to_numpy(np.int64)


def _group_of(ids: pd.Series, pattern: str, unmatched: str = "error") -> pd.Series:
    """The patient of each id from `data.group_pattern` (its first regex group, else the whole match);
    the id itself if no pattern. An id the pattern does not match is refused (`unmatched="error"`: its
    images would be split as separate patients, leaking the patient across folds) or is its own patient
    (`"own"`).

    Raises:
        UserError: the pattern is not a regex, or leaves ids unmatched (the count and a few named).
    """
    ids = ids.astype(str)
    if not pattern:
        return ids
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"bad value for config key 'data.group_pattern': {pattern!r} is not a regex ({e})") from None

    def one(i: str) -> str | None:
        m = rx.search(i)
        if m is None:
            return None
        return m.group(1) if rx.groups and m.group(1) is not None else m.group(0)

    groups = ids.map(one)
    miss = groups.isna()
    if miss.any() and unmatched == "error":
        shown = ", ".join(repr(i) for i in ids[miss].iloc[:3])
        raise UserError(f"data.group_pattern {pattern!r} matches no patient in {int(miss.sum())} of {len(ids)} "
                        f"image id(s), e.g. {shown}; fix the pattern, or set data.group_unmatched=own to make "
                        f"each of them a patient of its own")
    return groups.where(~miss, ids)


def _as_value(v: str) -> Any:
    return int(v) if v.lstrip("-").isdigit() else v


def _encode_labels(raw: pd.Series, classes: list[str], class_values: list[str],
                   where: Callable[[int], str]) -> tuple[pd.Series, list[str], list[Any]]:
    """Map raw label strings to 0..C-1. With configured `classes`, a label that is neither a class name
    nor its value is an error naming its place (`where(i)` for row i); without, the sorted distinct
    labels (numerically when they are all integers)."""
    values = raw.astype(str).str.strip()
    # a missing label spelt as a word (MISSING_WORDS), unless the configured classes are named so
    spelt_any = {str(c) for c in classes} | {str(v) for v in class_values}
    blank = (values == "") | (values.str.lower().isin(MISSING_WORDS) & ~values.isin(spelt_any))
    if blank.any():
        i = int(blank.to_numpy().argmax())
        raise UserError(f"{where(i)} has a blank label" + (f" ({values.iloc[i]!r})" if values.iloc[i] else ""))
    if classes:
        names = [str(c).strip() for c in classes]
    else:
        uniq = values.unique().tolist()
        names = sorted(uniq, key=int) if all(u.lstrip("-").isdigit() for u in uniq) else sorted(uniq)
    spelt = [str(v).strip() for v in class_values] or names
    index = {str(v): i for i, v in enumerate(spelt)}
    index.update({n: i for i, n in enumerate(names)})  # a class name wins over another class's value
    bad = ~values.isin(index)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise UserError(f"{where(i)} has label {values.iloc[i]!r}, not one of the classes {names}"
                        + (f" (or their values {spelt})" if spelt != names else ""))
    return values.map(index).astype(int), names, [_as_value(v) for v in spelt]


def _folders(root: Path, patterns: list[str]) -> list[tuple[int, Path]]:
    """(pattern index, folder) for the existing folders matching the globs, each pattern's matches
    shallowest first, without macOS debris."""
    out: list[tuple[int, Path]] = []
    for k, pattern in enumerate(patterns):
        found = [d for d in root.glob(pattern) if d.is_dir() and "__MACOSX" not in d.relative_to(root).parts]
        out += [(k, d) for d in sorted(found, key=lambda p: (len(p.parts), str(p)))]
    return out


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def _find_files(root: Path, patterns: list[str], ids: pd.Series, ext: str, what: Path, key: str,
                problems: list[Problem] | None) -> pd.Series:
    """Path of each id's file `<id><ext>` (or `<id>` when the id already ends with `ext`) in the first
    of the folders holding it; a byte-identical copy in a later folder (a tree unzipped twice) is ignored,
    a different file of that name (train/ and val/ both matched, each numbering from 1) is refused: the CSV
    cannot say which one its id means. Ids without a file: one error listing them, or `Problem`s when
    collecting."""
    dirs = _folders(root, patterns)
    if not dirs:
        raise UserError(f"image folder not found: {root / patterns[0]} (data.{key})")
    found: dict[str, Path] = {}
    again: dict[str, list[Path]] = {}  # a name in several of the folders: files after the first
    for _, d in dirs:
        for p in d.iterdir():
            if found.setdefault(p.name, p) is not p:
                again.setdefault(p.name, []).append(p)
    names = ids.map(lambda i: i if i.lower().endswith(ext.lower()) else i + ext)
    for name, i in zip(names, ids, strict=True):  # one id, two different files: which one it names is unknown
        other = next((p for p in again.get(name, []) if not _same_bytes(found[name], p)), None)
        if other is not None:
            raise UserError(f"id {i!r} in {what} names two different files in data.{key}: {found[name]} and "
                            f"{other}; narrow data.{key} to the folder that holds its image, or remove one")
    paths = names.map(found.get)
    missing = paths.isna()
    if missing.any():
        listed = [(str(dirs[0][1] / n), i) for n, i in zip(names[missing], ids[missing], strict=True)]
        if problems is None:
            shown = ", ".join(p for p, _ in listed[:3])
            raise UserError(f"{len(listed)} id(s) in {what} have no image file in data.{key}, e.g. {shown}")
        problems += [Problem("missing", p, f"id {i!r} in {what.name}") for p, i in listed]
    return paths.map(lambda p: str(p) if p is not None else "")


def _same_bytes(a: Path, b: Path) -> bool:
    """Byte-identical files: the sizes first, then the contents (`filecmp.cmp(shallow=False)`)."""
    return filecmp.cmp(a, b, shallow=False)


def _scan(root: Path, patterns: list[str], labelled: bool, taken: frozenset[str] = frozenset()) -> pd.DataFrame:
    """(id, path, label) for every image under the folders: in their class sub-folders when `labelled`
    (label = the sub-folder's name), else directly in them (label "").

    A file at the same place as an earlier one in a copy of its tree (`_doubled`: `chest_xray/train/NORMAL/
    x.jpeg` and `chest_xray/chest_xray/train/NORMAL/x.jpeg`, a tree unzipped twice) is dropped when its
    bytes are the first one's and refused, naming both, otherwise; so is a byte-identical file of the same
    name and class elsewhere (`train/` and `val/` holding one image).
    Every other file is an image of its own, and its id is `unique_ids`' (the file name without its
    extension unless names repeat), never one of `taken` (the training ids, for a test folder)."""
    at_place: dict[str, list[tuple[Path, Path]]] = {}  # path under a matched folder -> (folder, file) kept there
    by_name: dict[tuple[str, str], list[Path]] = {}  # (label, stem) -> the files kept under that name
    rows: list[tuple[Path, str]] = []
    for _, d in _folders(root, patterns):
        subs = [p for p in sorted(d.iterdir()) if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        for sub in (subs if labelled else []) or [d]:
            label = sub.name if sub is not d else ""
            for f in _image_files(sub):
                place = f.relative_to(d).as_posix()
                first = next((g for e, g in at_place.get(place, []) if _doubled(root, e, d)), None)
                if first is not None:
                    if not _same_bytes(first, f):
                        raise UserError(f"image id {f.stem!r} appears twice under {root} with different contents: "
                                        f"{first} and {f} (the same place in two copies of the tree); remove one")
                    continue
                same = by_name.setdefault((label, f.stem), [])
                if any(_same_bytes(g, f) for g in same):
                    continue
                at_place.setdefault(place, []).append((d, f))
                same.append(f)
                rows.append((f, label))
    ids = unique_ids([f.relative_to(root) for f, _ in rows], str(root), taken)  # root.glob found them
    return pd.DataFrame({"id": ids, "path": [str(f) for f, _ in rows], "label": [lab for _, lab in rows]},
                        columns=["id", "path", "label"])


def _doubled(root: Path, a: Path, b: Path) -> bool:
    """Folders `a` and `b` are one folder of a tree held twice: the path of one under data.root ends with
    the other's (`chest_xray/train` and `chest_xray/chest_xray/train`), as an archive unzipped into itself
    leaves it; `train/` and `val/`, or `a/x/train` and `b/x/train`, are not."""
    pa, pb = a.relative_to(root).parts, b.relative_to(root).parts
    short, long = sorted((pa, pb), key=len)
    return long[len(long) - len(short):] == short


def unique_ids(rels: list[Path], where: str, taken: frozenset[str] = frozenset()) -> list[str]:
    """An id for each file (`rels`: their paths under the folder `where` names), unique among them and
    outside `taken`: the file name without its extension
    (`person1_bacteria_1`, as the competitions name their images) when those are unique, else the shortest
    tail of the path that is, applied to every file alike: `<class>/<name>` (class folders
    reusing a counter), `<split>/<class>/<name>` (train/ and val/ read together, or fold_0/ and fold_1/,
    reusing one), and with the extension where only that differs (`1.png` and `1.jpg`). Logged when not
    the plain names.

    Raises:
        UserError: no tail is unique (a test file whose whole path is a training id)."""
    deepest = max((len(r.parts) for r in rels), default=1)
    for suffix in (False, True):
        for n in range(1, deepest + 1):
            ids = ["/".join((*r.parts[-n:-1], r.name if suffix else r.stem)) for r in rels]
            if len(set(ids)) == len(ids) and taken.isdisjoint(ids):
                if n > 1 or suffix:
                    plain = [r.stem for r in rels]
                    counts = Counter(plain)
                    k = next((i for i, p in enumerate(plain) if counts[p] > 1), None)
                    why = "repeat" if k is not None else "are training image ids too"
                    k = k if k is not None else next(i for i, p in enumerate(plain) if p in taken)
                    log(f"data: file names under {where} {why} (e.g. {plain[k]!r}: {rels[k]}); ids are the last "
                        f"{n} part(s) of the path{' with the extension' if suffix else ''}, e.g. {ids[k]!r}")
                return ids
    raise UserError(f"cannot give the images under {where} unique ids: {rels[0]} and the training ids overlap; "
                    f"rename the files")


def _load_test(cfg: Any, root: Path, classes: list[str], problems: list[Problem] | None,
               train_ids: frozenset[str] = frozenset()) -> pd.DataFrame:
    d = cfg.data
    csv = d.test_csv or d.sample_submission
    if csv:
        if d.submission_id_column and not d.test_csv:
            raise UserError("data.submission_id_column groups test images into submission rows; name the CSV that "
                            "lists the test images and their rows in data.test_csv")
        col = (d.test_id_column or d.id_column) if d.test_csv else d.id_column
        table = read_csv(root / csv, [col])
        ids = table[col].str.strip()
        test = pd.DataFrame({"id": ids})
        rows = submission_rows(cfg, table, root / csv)
        if rows is not None:
            test["row"] = rows
        test["path"] = _find_files(root, list(d.test_images), ids, d.image_ext, root / csv, "test_images",
                                   problems) if len(ids) else []
        return test[test["path"] != ""].reset_index(drop=True)
    if not _folders(root, list(d.test_images)):
        return pd.DataFrame({"id": pd.Series([], dtype=str), "path": pd.Series([], dtype=str)})
    test = _scan(root, list(d.test_images), labelled=d.layout == "folders", taken=train_ids)  # ids apart from train
    if (test["label"] != "").all() and len(test):  # a labelled held-out set (chest X-ray): keep its answers
        test["label"] = _encode_labels(test["label"], classes, list(d.class_values),
                                       lambda i: f"test image {test['path'].iloc[i]}")[0]
        return test.reset_index(drop=True)
    return test[["id", "path"]].reset_index(drop=True)


def load_competition(cfg: Any, strict: bool = True, check_sample: bool = False, extra: bool = False) -> Competition:
    """Read the download at `data.root` as the config describes it.

    Args:
        strict: raise on the first id without an image. With False they are collected in
            `Competition.problems` and their rows dropped, so prepare can list every problem at once.
        check_sample: also check the sample submission against the test images (prepare), before
            `data.limit` (smoke mode) cuts the tables down.

    The training images named by `data.exclude` are left out (logged); the test table is never touched.

    Raises:
        UserError: a file, column, label or image is missing or wrong, or `data.exclude` names an id that
            is not a training image; the message names it.
    """
    d = cfg.data
    root = resolve_path(d.root)
    if not root.is_dir():
        raise UserError(f"data.root does not exist: {root}{path_hint(d.root)}; to download it: python "
                        f"scripts/prepare.py --config <this config> --download")
    problems: list[Problem] | None = None if strict else []
    classes_cfg, values_cfg = [str(c) for c in d.classes], [str(v) for v in d.class_values]
    excluded = excluded_ids(cfg)
    if d.layout == "csv":
        train_csv = root / d.train_csv
        label_cols = [str(c) for c in d.label_columns] or [d.label_column]
        group_cols = [d.group_column] if d.group_column else []
        df = read_csv(train_csv, [d.id_column, *label_cols, *group_cols])
        if df.empty:
            raise UserError(f"{train_csv} has a header but no rows")
        ids = df[d.id_column].str.strip()
        if d.dedupe_ids:
            df, ids = dedupe(df.assign(**{d.id_column: ids}), d.id_column, label_cols, train_csv)
        dup = ids.duplicated()
        if dup.any():
            raise UserError(f"{train_csv}: id {ids[dup].iloc[0]!r} appears more than once "
                            f"(row {int(dup.idxmax()) + 2}); data.dedupe_ids=true reads an id's rows as one image")
        if not class_task(cfg):
            targets, classes = read_targets(cfg, df, train_csv)
            labels, values = targets["label"], []
            frame = pd.concat([pd.DataFrame({"id": ids}), targets], axis=1)
        else:
            labels, classes, values = _encode_labels(df[d.label_column], classes_cfg, values_cfg,
                                                     lambda i: f"{train_csv}: row {int(df.index[i]) + 2}")
            frame = pd.DataFrame({"id": ids, "label": labels})
        if group_cols:
            frame["group"] = df[d.group_column].str.strip()
        rows = submission_rows(cfg, df, train_csv)
        if rows is not None:
            frame["row"] = rows
        # excluded before their files are looked for: a missing or broken image can be excluded too
        train = exclude(frame, excluded)
        train["path"] = _find_files(root, list(d.train_images), train["id"], d.image_ext, train_csv, "train_images",
                                    problems)
        train = train[train["path"] != ""]
    else:
        if not class_task(cfg):
            raise UserError(f"data.layout=folders holds one class per folder; task={cfg.task} reads its targets "
                            f"from a labels CSV (data.layout=csv)")
        if d.group_column:
            raise UserError("data.group_column names a column of the labels CSV; data.layout=folders has none "
                            "(use data.group_pattern on the file names)")
        if not _folders(root, list(d.train_images)):
            raise UserError(f"image folder not found: {root / d.train_images[0]} (data.train_images)")
        scanned = _scan(root, list(d.train_images), labelled=True)
        if scanned.empty:
            raise UserError(f"no images in class folders under {root}/{list(d.train_images)} (data.train_images)")
        labels, classes, values = _encode_labels(scanned["label"], classes_cfg, values_cfg,
                                                 lambda i: f"class folder of {scanned['path'].iloc[i]}")
        train = exclude(scanned.assign(label=labels), excluded)
    if not classes_cfg and class_task(cfg) and not extra:
        if d.layout == "csv":
            def rows(idx: list[int]) -> str:
                return f"{train_csv.name} row(s) " + ", ".join(str(i + 2) for i in idx[:10])
        else:
            def rows(idx: list[int]) -> str:
                return f"folder {str(Path(scanned['path'].iloc[idx[0]]).parent)!r}"
        check_spelling(labels, classes, int(cfg.folds.n_folds), rows)
    if (class_task(cfg) or cfg.data.label_columns and cfg.task == "multiclass") and not extra:
        two_classes(labels, classes)
        if excluded:
            two_classes(train["label"], classes, " after data.exclude")
    test = _load_test(cfg, root, classes if class_task(cfg) else [], problems, frozenset(train["id"].astype(str)))
    if not d.group_column:
        train["group"] = _group_of(train["id"], d.group_pattern, d.group_unmatched)
    elif (train["group"] == "").any():
        i = int(np.flatnonzero((train["group"] == "").to_numpy())[0])
        raise UserError(f"{train_csv}: image {train['id'].iloc[i]!r} has a blank {d.group_column!r} "
                        f"(data.group_column)")
    if check_sample and not problems:  # ids without an image come first, listed by prepare
        check_sample_submission(cfg, root, test)
    cols = ["id", "path", "label", "group", *(["row"] if "row" in train.columns else []), *target_columns(train)]
    train, test = limit_images(train[cols].reset_index(drop=True), test, int(d.limit), len(classes))
    return Competition(train=train, test=test, classes=classes, label_values=values, root=root,
                       problems=problems or [])
