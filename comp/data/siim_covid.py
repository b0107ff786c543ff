"""SIIM-FISABIO-RSNA COVID-19 Detection (2021), data.layout=siim_covid: the download's tables.

Each radiograph is <split>/<StudyInstanceUID>/<SeriesInstanceUID>/<image id>.dcm; the study labels
(train_study_level.csv, id "<study>_study", one-hot negative / typical / indeterminate / atypical) hold for
every image of the study (train_image_level.csv: id "<image>_image", StudyInstanceUID). The submission's rows
are comp.predict.siim_covid's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.data.tables import read_csv
from comp.errors import UserError

STUDY_WORDS = ("negative", "typical", "indeterminate", "atypical")  # the PredictionString's class names, in
# the order of train_study_level.csv's columns (Negative for Pneumonia, Typical, Indeterminate, Atypical Appearance)
STUDY_SUFFIX, IMAGE_SUFFIX = "_study", "_image"


def study_images(folder: Path) -> pd.DataFrame:
    """The radiographs under `folder` (train/ or test/ of the download): one row per
    <study>/<series>/<image>.dcm with columns image (the file's stem), study, series, path; sorted by path.

    Raises:
        UserError: no .dcm file under `folder`, or one that is not three levels down (naming it).
    """
    files = sorted(folder.rglob("*.dcm"))
    if not files:
        raise UserError(f"{folder}: no .dcm files (expected <StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm)")
    rows = []
    for f in files:
        parts = f.relative_to(folder).parts
        if len(parts) != 3:
            raise UserError(f"{f}: not at <StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm under {folder}")
        rows.append((f.stem, parts[0], parts[1], str(f)))
    return pd.DataFrame(rows, columns=["image", "study", "series", "path"])


STUDY_COLUMNS = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")


def image_labels(root: Path, study_csv: str = "train_study_level.csv", image_csv: str = "train_image_level.csv",
                 folder: str = "train") -> pd.DataFrame:
    """The training table of the download at `root`: one row per image of `image_csv` (id "<image>_image",
    StudyInstanceUID) with columns id (the image id, no suffix), path (its DICOM under `folder`), label (its
    study's class, 0..3 in STUDY_COLUMNS order, from `study_csv`'s one-hot columns) and group (the study: folds
    keep a study's images together).

    Raises:
        UserError: a missing column; a study row that is not one-hot, or an image whose study has no row,
            or whose DICOM is not under `folder` (naming the file and row).
    """
    studies = read_csv(root / study_csv, ["id", *STUDY_COLUMNS])
    onehot = studies[list(STUDY_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = ~(onehot.isin([0, 1]).all(axis=1) & (onehot.sum(axis=1) == 1))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{root / study_csv}: row {i + 2} is not one-hot over {list(STUDY_COLUMNS)}")
    sid = studies["id"].str.strip()
    label = dict(zip(sid.str.removesuffix(STUDY_SUFFIX), onehot.to_numpy().argmax(1), strict=True))
    images = read_csv(root / image_csv, ["id", "StudyInstanceUID"])
    files = study_images(root / folder).set_index("image")["path"]
    rows = []
    for i, (rid, study) in enumerate(zip(images["id"].str.strip(), images["StudyInstanceUID"].str.strip(),
                                         strict=True)):
        image = rid.removesuffix(IMAGE_SUFFIX)
        if study not in label:
            raise UserError(f"{root / image_csv}: row {i + 2} study {study!r} has no row in {study_csv}")
        if image not in files.index:
            raise UserError(f"{root / image_csv}: row {i + 2} image {image!r} has no DICOM under {root / folder}")
        rows.append((image, files[image], int(label[study]), study))
    return pd.DataFrame(rows, columns=["id", "path", "label", "group"])


def layout_tables(cfg: Any, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """data.layout=siim_covid: (train, test) tables of load_competition. train: `image_labels` of
    data.train_csv (the study labels), train_image_level.csv and data.train_images[0]; test: every DICOM under
    data.test_images[0], columns id (the image), path and row (its study, the submission row its outputs
    are combined into by predict.aggregate).

    Raises:
        UserError: data.classes is not four classes (negative, typical, indeterminate, atypical), and
            `image_labels`' and `study_images`' errors.
    """
    d = cfg.data
    if len(d.classes) != len(STUDY_WORDS):
        raise UserError(f"data.layout=siim_covid predicts the four study classes; set data.classes to "
                        f"{list(STUDY_WORDS)} (the order of {list(STUDY_COLUMNS)}), not {list(d.classes)}")
    train = image_labels(root, d.train_csv, "train_image_level.csv", d.train_images[0])
    test = study_images(root / d.test_images[0])
    return train, pd.DataFrame({"id": test["image"], "path": test["path"], "row": test["study"]})


def check_sample(path: Path, sample_ids: pd.Series, test: pd.DataFrame) -> None:
    """prepare's look at the sample submission: each id is "<study>_study" of a test study or "<image>_image"
    of a test image (`test`: layout_tables' test table).

    Raises:
        UserError: the first id that is neither, naming the file and a count."""
    known = {f"{s}{STUDY_SUFFIX}" for s in test["row"].astype(str)}
    known |= {f"{i}{IMAGE_SUFFIX}" for i in test["id"].astype(str)}
    lost = ~sample_ids.str.strip().isin(known)
    if lost.any():
        raise UserError(f"sample submission {path}: {int(lost.sum())} of {len(sample_ids)} id(s) are no test study "
                        f"('<study>{STUDY_SUFFIX}') or image ('<image>{IMAGE_SUFFIX}') under data.test_images, e.g. "
                        f"{sample_ids[lost].iloc[0]!r}")
