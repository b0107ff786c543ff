"""Downloads beyond an image per CSV row or class folders, for the config starter (comp.data.inspect):
parquet recordings named by a CSV column (HMS 2024), the same images in sibling folders (ISIC 2020's JPEGs
and DICOMs), rows per patient and time (OSIC's visits: data.layout=visits), and otherwise folders of images per
id (RSNA 2022's CT slices), which are refused."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd

from comp.data.checks import as_number
from comp.data.guess import (
    DICOM_EXTS,
    PATIENT_RX,
    TEST_RX,
    Guess,
    _metric,
    _rel,
    _set_label_rows,
    _visible,
)
from comp.errors import UserError


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
            why = ("non-DICOM files decode faster" if ext[d].lower() in DICOM_EXTS and ext[first].lower()
                   not in DICOM_EXTS else "the larger or shorter-named")
            guess.notes.append(f"{_rel(d, root)}/ ({ext[d]}) holds {same} of the same {split} image names as "
                               f"{_rel(first, root)}/ ({ext[first]}): a copy of the same images, not read (one "
                               f"source, never both; {_rel(first, root)}/ taken as {why}"
                               f"; to read the other, swap the folders in data.train_images / data.test_images "
                               f"and set data.image_ext)")
            continue
        taken.append(d)
        seen |= names
    return [d for d in dirs if d in taken]


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
        other_stem = other_col.lower().removesuffix("_id")
        off = [c for c in df.columns if "offset" in c.lower() and c.lower().startswith(other_stem)]
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
    """Refuse a CSV whose id column names folders of images (RSNA 2022: train_images/<StudyInstanceUID>/; OSIC's
    train/<Patient>/<n>.dcm CT slices when its sample is not `<Patient>_<Weeks>`: `_visits_layout` first): a
    bag of images per id, which neither the csv layout (an image per row) nor the class-folder layout (the
    folders would be taken as classes) expresses. Taken as bags when at least half of the column's distinct
    values (2 or more) are names of image folders, and those folders' file names repeat across the ids' folders
    (slice numbers, not ids), or the column repeats its values and no other column names the files; a class
    map (one row per class folder) or a CSV naming each file is no bag.

    Raises:
        UserError: one line naming the CSV, the column, a folder, and (several rows per id, numeric columns)
            the per-patient measurement it looks like."""
    by_name: dict[str, list[Path]] = {}
    for d in images:
        by_name.setdefault(d.name, []).append(d)
    for col in df.columns:
        ids = set(df[col].astype(str).str.strip())
        named = [d for i in sorted(ids) for d in by_name.get(i, [])]
        if len(ids) < 2 or len({d.name for d in named}) < max(2, len(ids) // 2):
            continue
        owners: dict[str, set[str]] = {}  # file name -> the ids whose folders hold it (a tree unzipped twice
        for d in named:  # repeats a name under the same id, not under another)
            for p in images[d]:
                owners.setdefault(p.stem, set()).add(d.name)
        files = set(owners)
        repeated = sum(len(o) > 1 for o in owners.values()) > len(owners) // 2
        other = any(sum(str(v).strip() in files for v in df[c].head(500)) >= max(1, min(len(df), 500) // 2)
                    for c in df.columns if c != col)
        several = df[col].duplicated().any()
        if not (repeated or (several and not other)):  # unique file names named by another column, or a
            continue  # class map (one row per class folder): not bags
        exts = Counter(p.suffix for d in named for p in images[d]).most_common(1)[0][0]
        numeric = [c for c in df.columns if c != col and all(as_number(v) is not None for v in df[c].head(2000))]
        what = (f"; several rows per {col} with numeric columns ({', '.join(numeric)}): a value measured over time "
                f"per {col}, which data.layout=visits fits from the tables when the sample's ids are "
                f"<{col}>_<time> (OSIC; docs/tasks.md)" if several and numeric else "")
        raise UserError(f"{labels_csv}: column {col!r} names folders of images ({_rel(named[0], root)}/ holds "
                        f"{len(images[named[0]])} {exts} files): a bag of images per {col}, not an image per row "
                        f"and not class folders{what}; init.py found no layout for it: write the config by hand "
                        f"(docs/config.md; docs/mil.md for a row of many images)")


TIME_RX = re.compile(r"week|time|day|month|year|visit", re.I)


def _visits_layout(root: Path, labels_csv: Path, df: pd.DataFrame, sample: pd.DataFrame | None,
                   csvs: list[Path], guess: Guess) -> bool:
    """Fill the keys of rows per group and time (OSIC: train.csv has several visits per Patient, the sample's
    ids are `<Patient>_<Weeks>` with a value and a confidence column): data.layout=visits, the group column
    (whose values the sample's ids start with), the time column (numeric, named like week/time/day, else the
    first integer one that varies within a group), the value (the sample's second column) and the baseline
    and tabular columns (numeric columns that vary within a group: baseline features; columns constant per
    group: tabular), task=regression with a Laplace head and OSIC's metric. False when the sample is not
    `<group>_<time>` with two value columns, or no column of `df` holds its groups."""
    if sample is None or len(sample.columns) != 3 or sample.columns[1] not in df.columns:
        return False
    parts = sample[sample.columns[0]].astype(str).head(2000).str.rpartition("_")
    if not (parts[1] == "_").all() or pd.to_numeric(parts[2], errors="coerce").isna().any():
        return False
    label = sample.columns[1]
    test_groups = set(parts[0])
    tests = [p for p in csvs if p != labels_csv and TEST_RX.search(p.name)]
    for test in tests:
        t = pd.read_csv(test, dtype=str, keep_default_na=False, encoding="utf-8-sig", nrows=200_000)
        cols = [c for c in t.columns if c in df.columns and len(test_groups & set(t[c].str.strip())) >=
                max(1, len(test_groups) // 2)]
        if cols:
            break
    else:
        return False
    group = cols[0]
    numeric = [c for c in df.columns if c not in (group, label) and all(as_number(v) is not None for v in df[c])]
    varies = [c for c in numeric if (df.groupby(group)[c].nunique() > 1).any()]
    named = [c for c in varies if TIME_RX.search(c)]
    ints = [c for c in varies if all(float(v).is_integer() for v in df[c])]
    if not (named or ints):
        return False
    time = (named or ints)[0]
    per_group = df.groupby(group).nunique()
    constant = [c for c in df.columns if c not in (group, time, label) and (per_group[c] <= 1).all()]
    baseline = [label, *(c for c in varies if c not in (time, label) and c not in constant)]
    guess.set("data.layout", "visits", f"{labels_csv.name} has several rows per {group} (visits at {time}) and the "
              f"sample's ids are <{group}>_<{time}>: rows per group and time, fitted from the tables by "
              f"scripts/tabular.py (docs/tasks.md)")
    guess.set("data.train_csv", _rel(labels_csv, root), f"the visits: {group}, {time}, {label}")
    guess.set("data.test_csv", _rel(test, root), f"each test {group}'s baseline row")
    guess.set("data.id_column", sample.columns[0], f"the sample's <{group}>_<{time}> rows")
    guess.set("data.group_column", group, f"the sample's ids start with its values: folds keep each {group} whole")
    guess.set("data.time_column", time, "the number after the last '_' of the sample's ids")
    guess.set("data.label_column", label, "the sample submission's value column")
    guess.set("data.baseline_columns", baseline, f"numeric columns that change between a {group}'s visits: their "
              f"value at the {group}'s first visit is a feature")
    guess.set("data.tabular_columns", constant, f"columns constant per {group}: features as they are")
    guess.set("task", "regression", f"{label} is a number, with {sample.columns[2]!r} beside it in the sample")
    guess.set("train.loss", "laplace", f"the sample's {sample.columns[2]!r} is the prediction's uncertainty: a "
              f"mean and a scale with the Laplace likelihood")
    guess.set("metric", "laplace_log_likelihood", "OSIC's modified Laplace log-likelihood (check the "
              "competition's Evaluation page)")
    guess.unset("predict.output")
    guess.notes.append(f"images are not read: {group}'s image folders (a CT per patient) are not joined to the "
                       f"visits yet; fit with python scripts/tabular.py --config <this config>")
    guess.notes.append("the general defaults below (epochs, lr, batch_size) are not a recipe: OSIC's ships as "
                       "configs/osic.yaml (docs/configs.md); copy its model, optim and train keys, or start from it")
    return True
