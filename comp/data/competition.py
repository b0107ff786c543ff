"""A competition download → one table for training (id, path, label, group) and one for test (id, path).

Two layout families cover the competitions this kit targets (the download read as it comes):
- `csv`: a labels CSV plus image folders, files named `<id><image_ext>` (APTOS 2019, DR 2015, the demo);
- `folders`: one sub-folder per class under each training folder (chest X-ray, C-NMC 2019).
The test table comes from `data.test_csv`, else the sample submission, else the images under
`data.test_images` (by class sub-folder when there are some: a labelled held-out set, as in chest X-ray).

Which files a layout holds and their ids (unique whatever the layout: class folders, split folders read
together, nested globs, one name in two formats repeat a file name) are comp.data.layouts'.

Labels become integers 0..C-1 in the order of `data.classes`; `label_values` keeps the competition's
own spelling of each class (`data.class_values`, else the names) so the submission is written in its
encoding. A label in a CSV may be spelt either way.
"""

from __future__ import annotations

import re
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
    long_example,
    long_hint,
    not_long,
    two_classes,
)
from comp.data.image_base import window_path
from comp.data.layouts import (  # noqa: F401
    IMAGE_EXTS,
    Problem,
    find_files,
    matched_folders,
    matched_stores,
    scan,
    unique_ids,
)
from comp.data.mil import find_folders, join_views
from comp.data.siim_covid import layout_tables
from comp.data.tables import read_csv  # noqa: F401  (the CSV reader of every table, here since the start)
from comp.data.targets import (
    class_task,
    head_columns,
    join_rows,
    read_targets,
    submission_rows,
    target_columns,
    target_kind,
)
from comp.errors import UserError

MISSING_WORDS = {"nan", "null", "#n/a"}  # a missing label as pandas (astype(str)), JSON/SQL or Excel spell it


@dataclass
class Competition:
    train: pd.DataFrame  # id, path, label, group (+ target_<name> columns for label_columns tasks)
    test: pd.DataFrame  # id, path (and label when the held-out labels are known)
    classes: list[str]  # output names (comp.tasks.Task.names): classes, index = label; labels; target column
    label_values: list[Any]  # the competition's own value for each class (int or str)
    root: Path
    problems: list[Problem] = field(default_factory=list)  # ids without an image (load_competition(strict=False))
    several_rows: dict[str, int] = field(default_factory=dict)  # ids on several CSV rows joined into one image:
    # {ids, rows, disagreeing} (comp.data.targets.join_rows), kept in folds.json; empty = none

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


def _sources(cfg: Any, table: pd.DataFrame, ids: pd.Series, csv: Path) -> pd.DataFrame:
    """What each row of the CSV `table` reads: `source`, the name its file is found by (data.file_column, else
    the id) and `offset`, the second its window starts at, or a volume's slice (data.offset_column; "" when
    unset). A test CSV
    without either column reads the id / offset 0 (HMS 2024's test.csv names no offset: its windows start at
    0); train_csv must have both (read_csv checks it).

    Raises:
        UserError: an offset that is not a number >= 0, naming the file, row and column."""
    d = cfg.data
    out = pd.DataFrame({"source": ids.to_numpy(), "offset": ""}, index=table.index)
    if d.file_column and d.file_column in table.columns:
        out["source"] = table[d.file_column].astype(str).str.strip()
    if d.offset_column:
        raw = table[d.offset_column].astype(str).str.strip() if d.offset_column in table.columns else None
        v = pd.to_numeric(raw, errors="coerce") if raw is not None else pd.Series(0.0, index=table.index)
        bad = v.isna() | ~np.isfinite(v.fillna(0)) | (v < 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{csv}: row {int(table.index[i]) + 2} column {d.offset_column!r} has {raw.iloc[i]!r}, "
                            f"not a number >= 0 (data.offset_column: seconds into a recording, or a NIfTI volume's "
                            f"slice)")
        out["offset"] = v.astype(np.float64)
    return out


def _find_sources(cfg: Any, root: Path, rows: pd.DataFrame, folders: list[str], csv: Path, key: str,
                  problems: list[Problem] | None, table: pd.DataFrame | None = None) -> pd.Series:
    """The path of each row's file (`rows`: `_sources`' columns), `<file>#<offset>` with data.offset_column
    (comp.data.image_base.window_path: a window of a recording), "" for a file not found (`problems`); with
    mil.source series or study, the row's folder (comp.data.mil.find_folders, formatted from `table`'s row)."""
    if cfg.mil.source in ("series", "study"):
        return find_folders(cfg, root, folders, table.loc[rows.index] if table is not None else rows,
                            rows["source"], csv, key, problems)
    paths = find_files(root, folders, rows["source"], cfg.data.image_ext, csv, key, problems)
    if not cfg.data.offset_column:
        return paths
    return pd.Series([window_path(p, o) if p else "" for p, o in zip(paths, rows["offset"], strict=True)],
                     index=rows.index, dtype=object)


def _load_test(cfg: Any, root: Path, classes: list[str], problems: list[Problem] | None,
               train_ids: frozenset[str] = frozenset()) -> pd.DataFrame:
    d = cfg.data
    long = cfg.predict.shape == "long"  # the sample's rows are id x label: the ids come from elsewhere
    csv = d.test_csv or (d.sample_submission if not long else "")
    if csv:
        if d.submission_id_column and not d.test_csv:
            raise UserError("data.submission_id_column groups test images into submission rows; name the CSV that "
                            "lists the test images and their rows in data.test_csv")
        col = (d.test_id_column or d.id_column) if d.test_csv else d.id_column
        if not d.test_csv:
            not_long(cfg, root, root / csv, col)
        table = read_csv(root / csv, [col])
        if long:  # a long test.csv (RSNA 2022: row_id, StudyInstanceUID, prediction_type) repeats each id
            table = table.drop_duplicates(col).reset_index(drop=True)
        ids = table[col].str.strip()
        test = pd.DataFrame({"id": ids})
        rows = submission_rows(cfg, table, root / csv)
        if rows is not None:
            test["row"] = rows
        src = _sources(cfg, table, ids, root / csv)
        test["path"] = _find_sources(cfg, root, src, list(d.test_images), root / csv, "test_images",
                                     problems, table).to_numpy() if len(ids) else []
        if cfg.mil.source == "views":  # one row per mil.join value (comp.data.mil)
            return join_views(cfg, test, table, root / csv)
        return test[test["path"] != ""].reset_index(drop=True)
    if not matched_folders(root, list(d.test_images)) and not matched_stores(root, list(d.test_images)):
        return pd.DataFrame({"id": pd.Series([], dtype=str), "path": pd.Series([], dtype=str)})
    test = scan(root, list(d.test_images), labelled=d.layout == "folders", taken=train_ids)  # ids apart from train
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
    several: dict[str, Any] = {}
    classes_cfg, values_cfg = [str(c) for c in d.classes], [str(v) for v in d.class_values]
    excluded = excluded_ids(cfg)
    if d.layout == "visits":  # rows per patient and week, no image per row: comp.data.visits
        raise UserError("data.layout=visits (rows per group and time, OSIC) is fitted from its tables by "
                        "scripts/tabular.py (prepare, folds, fit, predict); not by the image scripts")
    if d.layout == "siim_covid":  # studies of DICOMs, labelled per study (comp.predict.siim_covid)
        train, test = layout_tables(cfg, root)
        train = exclude(train, excluded)
        if check_sample:
            check_sample_submission(cfg, root, test)
        train, test = limit_images(train, test, int(d.limit), len(classes_cfg))
        return Competition(train=train, test=test, classes=classes_cfg, label_values=values_cfg or classes_cfg,
                           root=root)
    if d.layout == "csv":
        train_csv = root / d.train_csv
        heads = cfg.task == "multihead"  # its columns follow the CSV's form (comp.data.targets.head_columns)
        label_cols = [] if heads else [str(c) for c in d.label_columns] or [d.label_column]
        group_cols = [d.group_column] if d.group_column else []
        source_cols = [c for c in (d.file_column, d.offset_column) if c]  # what a row reads: _sources
        df = read_csv(train_csv, [d.id_column, *label_cols, *group_cols, *source_cols])
        label_cols = head_columns(cfg, list(df.columns), train_csv) if heads else label_cols
        if df.empty:
            raise UserError(f"{train_csv} has a header but no rows")
        ids = df[d.id_column].str.strip()
        dup = ids.duplicated()
        if dup.any() and not d.dedupe_ids and d.label_rows == "refuse":
            raise UserError(f"{train_csv}: id {ids[dup].iloc[0]!r} appears more than once "
                            f"(row {int(dup.idxmax()) + 2}); data.dedupe_ids=true reads an id's rows as one image "
                            f"(their labels agreeing), data.label_rows=first|aggregate also when they differ")
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
        frame[["source", "offset"]] = _sources(cfg, df, ids, train_csv)  # an id's first row's, when joined
        if dup.any():  # an id on several rows: one image (data.dedupe_ids, data.label_rows)
            frame, several = join_rows(frame, df[label_cols], d.label_rows, target_kind(cfg), train_csv)
            labels = frame["label"]
        # excluded before their files are looked for: a missing or broken image can be excluded too
        train = exclude(frame, excluded)
        train["path"] = _find_sources(cfg, root, train, list(d.train_images), train_csv, "train_images", problems,
                                      df)
        train = train[train["path"] != ""]
        if cfg.mil.source == "views":  # one row per mil.join value (comp.data.mil)
            train = join_views(cfg, train, df, train_csv)
    else:
        if not class_task(cfg):
            raise UserError(f"data.layout=folders holds one class per folder; task={cfg.task} reads its targets "
                            f"from a labels CSV (data.layout=csv)")
        if d.group_column:
            raise UserError("data.group_column names a column of the labels CSV; data.layout=folders has none "
                            "(use data.group_pattern on the file names)")
        if not matched_folders(root, list(d.train_images)):
            raise UserError(f"image folder not found: {root / d.train_images[0]} (data.train_images)")
        scanned = scan(root, list(d.train_images), labelled=True)
        if scanned.empty:
            raise UserError(f"no images in class folders under {root}/{list(d.train_images)} (data.train_images)")
        labels, classes, values = _encode_labels(scanned["label"], classes_cfg, values_cfg,
                                                 lambda i: f"class folder of {scanned['path'].iloc[i]}")
        train = exclude(scanned.assign(label=labels), excluded)
    if not classes_cfg and class_task(cfg) and not extra:
        if d.layout == "csv":
            def rows(idx: list[int]) -> str:
                return f"{train_csv.name} row(s) " + ", ".join(str(int(labels.index[i]) + 2) for i in idx[:10])
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
                       problems=problems or [], several_rows=several)
