"""A config starter: look at a competition download and guess the `data.*` keys (and a few others) a config
for it needs, each with the reason, written as a commented YAML the user then edits (scripts/init.py).

What is looked at, in this order:
- the sample submission (a CSV named like `sample_submission.csv` / `sampleSubmission.csv`): its first
  column is the id, its second the label (several value columns: a probability per class);
- the labels CSV (the other CSV that holds the sample's id column, or whose ids name image files, `train`
  in its name first): its id and label columns, the label's distinct values (the classes), a patient-like
  column (`patient`, `subject`, `case`...);
- the image folders: those holding the labels CSV's ids as files (`<id><ext>`) for training, one named like
  `test` for the test images, the most common extension; an HDF5 image store (ISIC 2024's train-image.hdf5)
  is taken as a folder whose files are its keys;
- without a labels CSV, class folders (`<split>/<class>/*.png`, chest X-ray style): the splits named like
  `test` hold the test images, the others the training ones;
- the ids: a leading token shared by several ids (`10_left`, `10_right`; `person1_bacteria_1`) is guessed
  to be the patient (`data.group_pattern`), so folds keep a patient whole.
A guess is a guess: the written file says which keys to check.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from comp.data.checks import CONTINUOUS_MIN, as_number
from comp.data.competition import IMAGE_EXTS
from comp.data.layouts import store_keys
from comp.data.readers import store_of
from comp.errors import UserError

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


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") or part in SKIP for part in p.relative_to(root).parts)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False, nrows=200_000)


def _images(root: Path) -> dict[Path, list[Path]]:
    """Image files by folder (visible ones: no __MACOSX, no dot files); an HDF5 image store (ISIC 2024's
    train-image.hdf5) counts as a folder whose images are `<store>/<key>`, so it is guessed as one.

    Raises:
        ImageError: a store that cannot be opened (truncated, not HDF5), naming it."""
    found: dict[Path, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or not _visible(p, root):
            continue
        if p.suffix.lower() in IMAGE_EXTS:
            found.setdefault(p.parent, []).append(p)
        elif store_of(p) is not None:
            found[p] = [p / k for k in store_keys(p)]
    return found


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


def _one_source(root: Path, dirs: list[Path], images: dict[Path, list[Path]], guess: Guess, split: str) -> list[Path]:
    """Of `dirs`, those to read: a folder holding the same image names as one already taken is a copy of it
    (ISIC 2020 ships each image as jpeg/train/<id>.jpg and as train/<id>.dcm), left out with a note, never
    mixed in. Taken first: non-DICOM files (decoded faster, no windowing; what configs/isic2020.yaml reads),
    then the folder with more images, then the shorter path. Folders of different names (train_1/, train_2/)
    are all kept."""
    def rank(d: Path) -> tuple:
        dicom = sum(p.suffix.lower() in DICOM_EXTS for p in images[d]) > len(images[d]) // 2
        return dicom, -len(images[d]), len(_rel(d, root)), _rel(d, root)

    taken: list[Path] = []
    seen: set[str] = set()
    for d in sorted(dirs, key=rank):
        names = {p.stem for p in images[d]}
        same = len(names & seen)
        if same > len(names) // 2:
            first = next(t for t in taken if {p.stem for p in images[t]} & names)
            ext = {t: Counter(p.suffix for p in images[t]).most_common(1)[0][0] for t in (d, first)}
            guess.notes.append(f"{_rel(d, root)}/ ({ext[d]}) holds {same} of the same {split} image names as "
                               f"{_rel(first, root)}/ ({ext[first]}): a copy of the same images, not read (one "
                               f"source, never both; {_rel(first, root)}/ taken as "
                               f"{'non-DICOM files decode faster' if ext[d].lower() in DICOM_EXTS else 'the larger or shorter-named'}"
                               f"; to read the other, swap the folders in data.train_images / data.test_images "
                               f"and set data.image_ext)")
            continue
        taken.append(d)
        seen |= names
    return [d for d in dirs if d in taken]


def _csv_layout(root: Path, labels_csv: Path, df: pd.DataFrame, sample: pd.DataFrame | None,
                images: dict[Path, list[Path]], guess: Guess) -> bool:
    """Fill the csv-layout keys; False when no id column of `df` names image files."""
    # an id names a file by its name without the extension, or with it; never Path(id).stem, which cuts a DICOM
    # UID such as 1.2.826.0.1.3680043.8.498.448 at its last dot (RANZCR, RSNA 2022)
    stems = {d: {p.stem for p in files} | {p.name for p in files} for d, files in images.items()}
    candidates = list(df.columns)
    if sample is not None and sample.columns[0] in df.columns:  # the sample's id column first
        candidates.remove(sample.columns[0])
        candidates.insert(0, sample.columns[0])
    for col in candidates:
        ids = [str(v).strip() for v in df[col].head(500)]
        hits = {d: sum(i in s for i in ids) for d, s in stems.items()}
        train_dirs = [d for d, n in hits.items() if n >= max(1, len(ids) // 2) and not TEST_RX.search(_rel(d, root))]
        if train_dirs:
            break
    else:
        return False
    train_dirs = _one_source(root, train_dirs, images, guess, "training")
    guess.set("data.layout", "csv", f"{labels_csv.name} names image files in {_rel(train_dirs[0], root)}/")
    guess.set("data.train_csv", _rel(labels_csv, root), "the CSV whose ids are the training images' file names")
    guess.set("data.id_column", col, f"its values are file names under {_rel(train_dirs[0], root)}/")
    rest = [c for c in df.columns if c != col]
    label = (sample.columns[1] if sample is not None and len(sample.columns) > 1 and sample.columns[1] in rest
             else min(rest, key=lambda c: df[c].nunique()) if rest else "")
    if not label:
        raise UserError(f"{labels_csv} has no column besides the id {col!r}: no label to learn")
    why = "the sample submission's value column" if sample is not None and label == sample.columns[1] else \
        f"the column with the fewest distinct values ({df[label].nunique()})"
    guess.set("data.label_column", label, why)
    _set_label_rows(guess, df[col].astype(str), df[label].astype(str), labels_csv.name)
    copies = any(n.startswith(tuple(f"{_rel(d, root)}/ (" for d in images)) for n in guess.notes)
    guess.set("data.train_images", [_rel(d, root) for d in train_dirs], "the folders holding those files" +
              (" (one source: a copy of the same images elsewhere is left out, see the NOTE)" if copies else ""))
    exts = Counter(p.suffix for d in train_dirs for p in images[d])
    guess.set("data.image_ext", exts.most_common(1)[0][0], f"the extension of the training images {dict(exts)}")
    chosen = {p.suffix.lower() for d in train_dirs for p in images[d]}
    test_dirs = [d for d in images if TEST_RX.search(_rel(d, root)) and d not in train_dirs
                 and chosen & {p.suffix.lower() for p in images[d]}]  # the training images' source, not a copy
    test_dirs = _one_source(root, test_dirs, images, guess, "test")
    guess.set("data.test_images", [_rel(d, root) for d in test_dirs] or ["test"],
              "folders named like 'test'" if test_dirs else "none found: point it at the test images")
    _metric(df[label].astype(str).tolist(), guess)
    _set_group_pattern(guess, df[col].astype(str).tolist())
    patient = [c for c in rest if c != label and PATIENT_RX.search(c)]
    if patient:  # a column that names the patient beats a token guessed from the ids
        for key in ("data.group_pattern", "data.group_unmatched"):
            guess.values.pop(key, None)
            guess.why.pop(key, None)
        guess.set("data.group_column", patient[0], f"the column of {labels_csv.name} named like a patient id: "
                  f"folds keep each of its values whole")
    return True


def _arrays(root: Path) -> dict[Path, list[Path]]:
    """Parquet recordings by folder (HMS 2024's train_spectrograms/<spectrogram_id>.parquet, train_eegs/)."""
    found: dict[Path, list[Path]] = {}
    for p in sorted(root.rglob("*.parquet")):
        if p.is_file() and _visible(p, root):
            found.setdefault(p.parent, []).append(p)
    return found


def _array_layout(root: Path, labels_csv: Path, df: pd.DataFrame, sample: pd.DataFrame | None,
                  arrays: dict[Path, list[Path]], images: dict[Path, list[Path]], guess: Guess) -> bool:
    """Fill the keys of recordings read as images (HMS 2024): a column of `df` whose values name parquet files
    of a training folder (`data.file_column` when it is not the sample's id), the offset column of that file
    (`<file>_..._offset_...`: the window's start), the sample's value columns as the labels (integer counts
    in `df`: votes, so soft targets and the KL divergence), one sample per id. Spectrograms are taken before
    raw EEG (the shipped configs/hms2024.yaml's choice); image folders no CSV names (HMS's
    example_figures/) are never read. False when no column names parquet files."""
    stems = {d: {p.stem for p in files} for d, files in arrays.items()}
    matches = []
    for col in df.columns:
        ids = list(dict.fromkeys(str(v).strip() for v in df[col].head(2000)))[:500]
        for d in arrays:
            if not TEST_RX.search(_rel(d, root)) and sum(i in stems[d] for i in ids) >= max(1, len(ids) // 2):
                matches.append((col, d))
    if not matches:
        return False
    matches.sort(key=lambda m: ("spectrogram" not in m[1].name.lower(), _rel(m[1], root)))
    col, folder = matches[0]
    id_col = sample.columns[0] if sample is not None and sample.columns[0] in df.columns else col
    guess.set("data.layout", "csv", f"{labels_csv.name}'s {col!r} names the parquet recordings in "
              f"{_rel(folder, root)}/: a window of each is read as an image (docs/images.md)")
    guess.set("data.train_csv", _rel(labels_csv, root), "the CSV whose rows name the training recordings")
    guess.set("data.id_column", id_col, "the sample submission's id column: one sample (and one prediction) "
              "per value" if id_col != col else f"its values name the files in {_rel(folder, root)}/")
    if id_col != col:
        guess.set("data.file_column", col, f"its values name the files in {_rel(folder, root)}/ "
                  f"(<value>.parquet), not the id {id_col!r}")
    stem = col.lower().removesuffix("_id")
    offsets = [c for c in df.columns if "offset" in c.lower() and c.lower().startswith(stem)]
    if offsets:
        guess.set("data.offset_column", offsets[0], f"where a row's window starts, in seconds into its {col} recording")
    values = [c for c in (sample.columns[1:] if sample is not None else []) if c in df.columns]
    if not values:
        raise UserError(f"{labels_csv}: none of the sample submission's value columns is in it: no label to learn")
    counts = all(v.isdigit() for c in values for v in df[c].astype(str).head(2000))
    if len(values) > 1:
        guess.set("data.label_columns", values, "the sample submission's value columns, in the training CSV too")
        if counts:
            guess.set("task", "multiclass", f"the {len(values)} label columns hold counts (votes): soft targets, "
                      f"each sample's counts normalised to shares")
            guess.set("metric", "kl_divergence", "predicted shares against vote shares (HMS 2024's metric; check "
                      "the competition's Evaluation page)")
    else:
        guess.set("data.label_column", values[0], "the sample submission's value column")
        _metric(df[values[0]].astype(str).tolist(), guess)
    joined = df[values].astype(str).agg("|".join, axis=1)
    _set_label_rows(guess, df[id_col].astype(str), joined, labels_csv.name)
    patient = [c for c in df.columns if c not in (id_col, col) and PATIENT_RX.search(c)]
    if patient:
        guess.set("data.group_column", patient[0], f"the column of {labels_csv.name} named like a patient id: "
                  f"folds keep each of its values whole")
    guess.set("data.train_images", [_rel(folder, root)], "the folder of the recordings")
    tests = sorted((d for d in arrays if TEST_RX.search(_rel(d, root))),
                   key=lambda d: d.name.lower() != folder.name.lower().replace("train", "test"))
    guess.set("data.test_images", [_rel(tests[0], root)] if tests else ["test"],
              f"the test folder of the same recordings as {_rel(folder, root)}/" if tests else
              "none found: point it at the test recordings")
    guess.set("data.image_ext", ".parquet", "the recordings' extension")
    guess.set("model.in_chans", 1, "a spectrogram window is one grey channel")
    guess.set("images.cache", True, "each window decoded from its parquet once")
    for other_col, d in matches[1:]:
        off = [c for c in df.columns if "offset" in c.lower() and c.lower().startswith(other_col.lower().removesuffix("_id"))]
        guess.notes.append(f"{_rel(d, root)}/ holds the same recordings by {other_col!r} (raw signals): to read "
                           f"them instead set data.file_column={other_col}"
                           + (f" data.offset_column={off[0]}" if off else "")
                           + f" data.train_images=[{_rel(d, root)}] and the test folder alike")
    ignored = [_rel(d, root) for d in images]
    if ignored:
        guess.notes.append(f"image folders no CSV names, not read: {', '.join(f'{i}/' for i in ignored)} "
                           f"(the download's illustrations)")
    return True


def _refuse_bags(root: Path, labels_csv: Path, df: pd.DataFrame, images: dict[Path, list[Path]]) -> None:
    """Refuse a CSV whose id column names folders of images (OSIC: train/<Patient>/<n>.dcm CT slices; RSNA 2022:
    train_images/<StudyInstanceUID>/): a bag of images per id, which neither the csv layout (an image per row)
    nor the class-folder layout (the folders would be taken as classes) expresses. Taken as bags when at least
    half of the column's distinct values (2 or more) are names of image folders, and those folders' file names
    repeat across them (slice numbers, not ids) or no other column names their files.

    Raises:
        UserError: one line naming the CSV, the column, a folder, and (several rows per id, numeric columns)
            the per-patient measurement it looks like."""
    by_name: dict[str, list[Path]] = {}
    for d in images:
        by_name.setdefault(d.name, []).append(d)
    for col in df.columns:
        ids = set(df[col].astype(str).str.strip())
        named = [d for i in ids for d in by_name.get(i, [])]
        if len(ids) < 2 or len({d.name for d in named}) < max(2, len(ids) // 2):
            continue
        files = Counter(p.stem for d in named for p in images[d])
        repeated = sum(n > 1 for n in files.values()) > len(files) // 2
        other = any(sum(str(v).strip() in files for v in df[c].head(500)) >= max(1, min(len(df), 500) // 2)
                    for c in df.columns if c != col)
        if not repeated and other:
            continue
        exts = Counter(p.suffix for d in named for p in images[d]).most_common(1)[0][0]
        several = df[col].duplicated().any()
        numeric = [c for c in df.columns if c != col and all(as_number(v) is not None for v in df[c].head(2000))]
        what = (f"; several rows per {col} with numeric columns ({', '.join(numeric)}): a value measured over time "
                f"per {col} (OSIC-like), to predict from tabular rows joined to the {col}'s scan"
                if several and numeric else "")
        raise UserError(f"{labels_csv}: column {col!r} names folders of images ({_rel(named[0], root)}/ holds "
                        f"{len(images[named[0]])} {exts} files): a bag of images per {col}, not an image per row "
                        f"and not class folders{what}; init.py cannot write this config: bags and tabular targets "
                        f"are issue 27 / issue 28 item 4, write it by hand (docs/config.md)")


def _folder_layout(root: Path, images: dict[Path, list[Path]], guess: Guess) -> bool:
    """Fill the class-folder keys: split folders whose sub-folders (the classes) hold the images."""
    splits: dict[str, set[str]] = {}  # split folder name -> class names
    for d in images:
        if d.parent != root and _visible(d.parent, root):
            splits.setdefault(d.parent.name, set()).add(d.name)
    splits = {s: c for s, c in splits.items() if len(c) >= 2}
    if not splits:
        return False
    test = sorted(s for s in splits if TEST_RX.search(s))
    train = sorted(s for s in splits if s not in test)
    if not train:
        return False
    classes = sorted(set().union(*(splits[s] for s in train)))
    guess.set("data.layout", "folders", f"no labels CSV; images sit in class folders {classes} under {train}")
    guess.set("data.train_csv", "", "the labels are the folder names")
    guess.set("data.train_images", [f"**/{s}" for s in train],
              "every folder of that name at any depth (a tree unzipped twice is read once)")
    loose = [_rel(d, root) for d in images if TEST_RX.search(_rel(d, root)) and d.parent.name not in splits]
    guess.set("data.test_images", [f"**/{s}" for s in test] or loose or ["test"],
              "its class folders make a labelled held-out set" if test else
              "the image folders named like 'test' (keep the one to submit)" if loose else
              "none found: point it at the test images")
    guess.set("data.classes", classes, "the class folder names, sorted")
    names = [p.stem for d, files in images.items() if d.parent.name in train for p in files]
    _set_group_pattern(guess, names)
    _metric(classes, guess)
    return True


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


def inspect_download(root: str | Path) -> Guess:
    """Guess the config of the competition download under `root` (see the module docstring).

    Raises:
        UserError: `root` is no folder, holds no image, or neither a labels CSV nor class folders.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder the competition was downloaded (unzipped) into")
    guess = Guess()
    guess.set("data.root", str(root), "the folder given")
    guess.set("out_dir", f"runs/{root.name}", "one experiment folder per competition")
    guess.set("data.competition", "", "the Kaggle slug (the competition URL's last part): needed to submit, and to "
              "download again; a dataset instead: data.source=dataset and data.dataset=owner/name")
    images, arrays = _images(root), _arrays(root)
    if not images and not arrays:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_EXTS))}, or .parquet recordings) under {root}; "
                        f"unzip the download first")
    csvs = sorted(p for p in root.rglob("*.csv") if _visible(p, root))
    samples = [p for p in csvs if SAMPLE_RX.search(p.name)]
    sample = _read(samples[0]) if samples else None
    if samples:
        guess.set("data.sample_submission", _rel(samples[0], root),
                  f"named like a sample submission; columns {list(sample.columns)}")
        if len(sample.columns) > 2:
            guess.set("predict.output", "prob", f"the sample has one value column per class {list(sample.columns[1:])}")
    else:
        guess.set("data.sample_submission", "", "no sample submission found: the submission is id,label")
    others = sorted((p for p in csvs if p not in samples), key=lambda p: ("train" not in p.name.lower(), p.name))
    for path in others:
        df = _read(path)
        if len(df.columns) >= 2 and len(df):
            _refuse_bags(root, path, df, images)
    done = False
    for path in others:
        df = _read(path)
        if len(df.columns) >= 2 and len(df) and (_array_layout(root, path, df, sample, arrays, images, guess)
                                                  or _csv_layout(root, path, df, sample, images, guess)):
            done = True
            break
    if not done and not _folder_layout(root, images, guess):
        raise UserError(f"{root}: found neither a CSV naming the image files nor class folders; write the "
                        f"config by hand (docs/config.md)")
    id_col = guess.values.get("data.id_column", "id")
    tests = [p for p in others if TEST_RX.search(p.name) and id_col in _read(p).columns]
    if tests:
        guess.set("data.test_csv", _rel(tests[0], root), f"named like 'test' and holds the id column {id_col!r}")
    return guess


HEADER = """# Written by scripts/init.py from {root}: guesses, each with its reason; check them, then run
#   python scripts/prepare.py --config {out}
# Every key and its default: docs/config.md.
"""


def config_text(guess: Guess, out: str | Path = "config.yaml") -> str:
    """The guessed config as YAML, each key under a comment with its reason, the notes at the top."""
    lines = [HEADER.format(root=guess.values.get("data.root", "?"), out=out)]
    lines += [f"# NOTE: {n}" for n in guess.notes]
    sections: dict[str, list[str]] = {}
    for key, value in guess.values.items():
        section, _, leaf = key.rpartition(".")
        body = yaml.safe_dump({leaf or key: value}, default_flow_style=True, width=1000).strip()[1:-1]
        sections.setdefault(section, []).append(f"# {guess.why[key]}\n{body}")
    for section, items in sections.items():
        if not section:
            lines += items
            continue
        lines.append(f"{section}:")
        lines += ["\n".join("  " + ln for ln in item.splitlines()) for item in items]
    return "\n".join(lines) + "\n"
