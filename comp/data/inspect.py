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
  is taken as a folder whose files are its keys; a folder holding the same image names as another (ISIC
  2020's DICOM train/ beside jpeg/train/) is a copy: one source is read, the non-DICOM one first, with a note;
- parquet recordings named by a labels CSV column (HMS 2024's train_spectrograms/<spectrogram_id>.parquet)
  before any image: the file and offset columns, the sample's value columns as labels (counts: soft targets,
  kl_divergence), spectrograms before raw EEG, image folders no CSV names (example_figures/) never read;
- rows per patient and time (OSIC: several visits per Patient in train.csv, the sample's ids
  `<Patient>_<Weeks>` with a value and a confidence): data.layout=visits, fitted from the tables alone
  (scripts/tabular.py); its CT folders are not read;
- a CSV with one row per value of a column naming folders of slices (RSNA 2022's
  train_images/<StudyInstanceUID>/<n>.dcm) or of series folders (brain tumour's train/<BraTS21ID:05d>/FLAIR/):
  the `mil:` keys of a series or study layout (comp.data.guess_mil, which also finds views and tiles after
  the csv layout: images in a folder per patient read through `<folder>/*`, a sample id joined from columns,
  thumbnails); other folders of images per id are refused; folders of series without a CSV are not class
  folders;
- without a labels CSV, class folders (`<split>/<class>/*.png`, chest X-ray style): the splits named like
  `test` hold the test images, the others the training ones;
- the ids: a leading token shared by several ids (`10_left`, `10_right`; `person1_bacteria_1`) is guessed
  to be the patient (`data.group_pattern`), so folds keep a patient whole.
A guess is a guess: the written file says which keys to check.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from comp.data.competition import IMAGE_EXTS
from comp.data.download_kinds import _array_layout, _arrays, _one_source, _refuse_bags, _visits_layout
from comp.data.guess import (  # noqa: F401  (Guess and _metric: this module's interface too)
    PATIENT_RX,
    SAMPLE_RX,
    TEST_RX,
    Guess,
    _metric,
    _read,
    _rel,
    _set_group_pattern,
    _set_label_rows,
    _visible,
)
from comp.data.guess_mil import refine, series_layout
from comp.data.layouts import store_keys
from comp.data.readers import store_of
from comp.errors import UserError


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
    thumbs = [d for d in test_dirs if "thumbnail" in d.name.lower() and d not in train_dirs]
    if thumbs:  # UBC-OCEAN's test_thumbnails/<id>_thumbnail.png: smaller copies, not test images
        test_dirs = [d for d in test_dirs if d not in thumbs]
        guess.notes.append(f"{', '.join(f'{_rel(d, root)}/' for d in thumbs)}: thumbnails of the images, not read")
    test_dirs = _one_source(root, test_dirs, images, guess, "test")
    guess.set("data.test_images", [_rel(d, root) for d in test_dirs] or ["test"],
              "folders named like 'test'" if test_dirs else "none found: point it at the test images")
    _metric(df[label].astype(str).tolist(), guess)
    _set_group_pattern(guess, df[col].astype(str).tolist())
    patient = [c for c in rest if c != label and PATIENT_RX.search(c)]
    if patient:  # a column that names the patient beats a token guessed from the ids
        guess.unset("data.group_pattern", "data.group_unmatched")
        guess.set("data.group_column", patient[0], f"the column of {labels_csv.name} named like a patient id: "
                  f"folds keep each of its values whole")
    return True


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
    owners: dict[str, set[str]] = {}  # file name -> the split folders holding it under some class folder
    for d, files in images.items():
        if d.parent.name in train and _visible(d.parent, root):
            for p in files:
                owners.setdefault(p.name, set()).add(d.parent.name)
    if len(train) > 2 and sum(len(o) > 1 for o in owners.values()) > len(owners) // 2:
        raise UserError(f"{root}: {len(train)} folders ({', '.join(f'{s}/' for s in train[:3])}, ...) hold sub-folders "
                        f"{classes[:4]} whose files repeat their names (Image-1.dcm in each): series of a patient "
                        f"or study each, not class folders; init.py needs the CSV that labels them, one row per "
                        f"folder (mil.source: study, docs/config.md)")
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
    for path in others:  # rows per patient and time (OSIC), before the bags of images its CT folders look like
        df = _read(path)
        if len(df.columns) >= 2 and len(df) and _visits_layout(root, path, df, sample, others, guess):
            return guess
    tables = [p for p in others if len(df := _read(p)) and len(df.columns) >= 2]
    done = series_layout(root, tables, sample, images, guess)  # a folder of slices per row (issue 27)
    if not done:
        for path in tables:
            _refuse_bags(root, path, _read(path), images)
    for pass_images in (images, _pools(root, images)):  # image files named by a CSV, then nested per patient
        for path in tables if not done else []:
            df = _read(path)
            if (pass_images is images and _array_layout(root, path, df, sample, arrays, images, guess)):
                done = True
                break
            if _csv_layout(root, path, df, sample, pass_images, guess):
                done = True
                refine(root, sample, tables, images, guess)  # views or tiles, the competition's metric
                break
    if not done and not _folder_layout(root, images, guess):
        raise UserError(f"{root}: found neither a CSV naming the image files nor class folders; write the "
                        f"config by hand (docs/config.md)")
    _test_csv(root, others, guess)
    return guess


def _pools(root: Path, images: dict[Path, list[Path]]) -> dict[Path, list[Path]]:
    """Image folders sharing a parent below the root (one per patient: RSNA mammography's
    train_images/<patient_id>/<image_id>.dcm) pooled as `<parent>/*`, a glob data.train_images takes."""
    children: dict[Path, list[Path]] = {}
    for d in images:
        if d.is_dir() and d.parent != root:
            children.setdefault(d.parent, []).append(d)
    return {p / "*": [f for d in ds for f in images[d]] for p, ds in children.items() if len(ds) >= 2}


def _test_csv(root: Path, others: list[Path], guess: Guess) -> None:
    """data.test_csv: a CSV named like 'test' holding the id column; one that repeats its ids (RSNA 2023's
    test_series_meta.csv: a row per series) only for a long sample (RSNA 2022's test.csv: a row per label),
    else the sample lists the test ids (a NOTE says so)."""
    id_col = guess.values.get("data.id_column", "id")
    for path in others:
        df = _read(path)
        if not TEST_RX.search(path.name) or id_col not in df.columns:
            continue
        if df[id_col].duplicated().any() and guess.values.get("predict.shape") != "long":
            guess.notes.append(f"{_rel(path, root)} repeats {id_col!r} (several rows per id): not taken as "
                               f"data.test_csv, the sample submission lists the test ids")
            continue
        guess.set("data.test_csv", _rel(path, root), f"named like 'test' and holds the id column {id_col!r}")
        return


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
