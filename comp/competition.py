"""A competition download → one table for training (id, path, label, group) and one for test (id, path).

Two layout families cover the competitions this kit targets:
- `csv`: a labels CSV plus image folders, files named `<id><image_ext>` (APTOS 2019, DR 2015, the demo);
- `folders`: one sub-folder per class under each training folder (chest X-ray, C-NMC 2019).
Labels become integers 0..C-1 in the order of `classes`; `label_values` keeps the competition's own
spelling of each class so the submission is written in its encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from comp.config import resolve_path
from comp.errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class Competition:
    train: pd.DataFrame  # id, path, label (int 0..C-1), group
    test: pd.DataFrame  # id, path (and label when the held-out labels are known)
    classes: list[str]  # class names, index = label
    label_values: list[Any]  # the competition's own value for each class (int or str)
    root: Path

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a CSV (BOM and CRLF tolerated) and check it has `columns`, naming the file and what it has."""
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as e:
        raise UserError(f"cannot read CSV {path}: {str(e).splitlines()[0]}") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column {missing[0]!r} (columns are {list(df.columns)})")
    return df


def _group_of(ids: pd.Series, pattern: str) -> pd.Series:
    """The patient of each id from `data.group_pattern` (first regex group); the id itself if no pattern."""
    if not pattern:
        return ids.astype(str)
    rx = re.compile(pattern)

    def one(i: str) -> str:
        m = rx.search(i)
        return m.group(1) if m else i

    return ids.astype(str).map(one)


def _encode_labels(raw: pd.Series, classes: list[str], where: Path) -> tuple[pd.Series, list[str], list[Any]]:
    """Map raw label strings to 0..C-1. With configured `classes`, a label outside them is an error
    naming its row; without, the sorted distinct labels (numerically when they are all integers)."""
    blank = raw.str.strip() == ""
    if blank.any():
        row = int(blank.idxmax()) + 2  # +1 header, +1 one-based
        raise UserError(f"{where}: row {row} has a blank label")
    values = raw.str.strip()
    if classes:
        names = [str(c) for c in classes]
    else:
        uniq = values.unique().tolist()
        names = sorted(uniq, key=int) if all(u.lstrip("-").isdigit() for u in uniq) else sorted(uniq)
    index = {n: i for i, n in enumerate(names)}
    bad = ~values.isin(index)
    if bad.any():
        row = int(bad.idxmax()) + 2
        raise UserError(f"{where}: row {row} has label {values[bad].iloc[0]!r}, not one of the classes {names}")
    label_values = [int(n) if n.lstrip("-").isdigit() else n for n in names]
    return values.map(index).astype(int), names, label_values


def _find_files(root: Path, folders: list[str], ids: pd.Series, ext: str, what: Path) -> pd.Series:
    """Path of `<id><ext>` in the first of `folders` holding it; all missing ids in one error."""
    dirs = [d for pattern in folders for d in sorted(root.glob(pattern)) if d.is_dir()]
    if not dirs:
        raise UserError(f"image folder not found: {root / folders[0]} (data.train_images / data.test_images)")
    found: dict[str, Path] = {}
    for d in dirs:
        for p in d.iterdir():
            if p.suffix.lower() == ext.lower():
                found.setdefault(p.stem, p)
    paths = ids.map(lambda i: found.get(i))
    missing = ids[paths.isna()]
    if len(missing):
        shown = ", ".join(f"{d / (i + ext)}" for i in missing.head(3) for d in dirs[:1])
        raise UserError(f"{len(missing)} id(s) in {what} have no image file, e.g. {shown}")
    return paths.map(str)


def _scan_class_folders(root: Path, folders: list[str]) -> pd.DataFrame:
    """(id, path, label_name) for every image under <folder>/<class>/ for each folder glob."""
    rows = []
    for pattern in folders:
        for d in sorted(root.glob(pattern)):
            for cls_dir in sorted(p for p in d.iterdir() if p.is_dir()):
                for f in sorted(cls_dir.iterdir()):
                    if f.suffix.lower() in IMAGE_EXTS:
                        rows.append((f.stem, str(f), cls_dir.name))
    return pd.DataFrame(rows, columns=["id", "path", "label"])


def load_competition(cfg: Any) -> Competition:
    """Read the download at `data.root` as the config describes it.

    Raises:
        UserError: a file, column, label or image is missing or wrong; the message names it.
    """
    d = cfg.data
    root = resolve_path(cfg, d.root)
    if not root.is_dir():
        raise UserError(f"data.root does not exist: {root} (run scripts/prepare.py to download it)")
    if d.layout == "csv":
        train_csv = root / d.train_csv
        df = read_csv(train_csv, [d.id_column, d.label_column])
        ids = df[d.id_column].str.strip()
        dup = ids.duplicated()
        if dup.any():
            raise UserError(f"{train_csv}: id {ids[dup].iloc[0]!r} appears more than once (row {int(dup.idxmax()) + 2})")
        labels, classes, values = _encode_labels(df[d.label_column], list(d.classes), train_csv)
        train = pd.DataFrame({"id": ids, "label": labels})
        train["path"] = _find_files(root, list(d.train_images), train["id"], d.image_ext, train_csv)
        if d.test_csv:
            test_ids = read_csv(root / d.test_csv, [d.id_column])[d.id_column].str.strip()
        elif d.sample_submission:
            test_ids = read_csv(root / d.sample_submission, [d.id_column])[d.id_column].str.strip()
        else:
            test_ids = pd.Series([], dtype=str)
        test = pd.DataFrame({"id": test_ids})
        test["path"] = _find_files(root, list(d.test_images), test["id"], d.image_ext,
                                   root / (d.test_csv or d.sample_submission)) if len(test) else []
    else:
        scanned = _scan_class_folders(root, list(d.train_images))
        if scanned.empty:
            raise UserError(f"no images in class folders under {root}/{list(d.train_images)}")
        labels, classes, values = _encode_labels(scanned["label"], list(d.classes), root)
        train = scanned.assign(label=labels)
        test = _scan_class_folders(root, list(d.test_images))
        if not test.empty:  # a labelled held-out folder (chest X-ray): keep its labels for scoring
            test["label"] = _encode_labels(test["label"], classes, root)[0]
    dup = train["id"].duplicated()
    if dup.any():
        raise UserError(f"image id {train['id'][dup].iloc[0]!r} appears twice under {root}")
    train["group"] = _group_of(train["id"], d.group_pattern)
    cols = ["id", "path", "label", "group"]
    return Competition(train=train[cols].reset_index(drop=True), test=test.reset_index(drop=True),
                       classes=classes, label_values=values, root=root)
