"""The replicas of the many-images-per-row downloads (tests/replicas_mil.py) are faithful where the kit will
rely on them: every file a CSV names exists, pydicom reads every DICOM, each series' geometry is consistent
(one orientation and size, positions evenly spaced along the slice normal), the file names carry the
InstanceNumber, at least one series is out of slice order, both classes are there for a 2-fold split, and
each replica's MIL_CONFIGS overrides make a config that loads."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from replicas_mil import MIL_BUILDERS, MIL_CONFIGS, mil_overrides, normal

from comp.experiment import load_config


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out, seconds = {}, {}
    for name, build in MIL_BUILDERS.items():
        t = time.perf_counter()
        out[name] = build(tmp_path_factory.mktemp(name) / "data")
        seconds[name] = time.perf_counter() - t
    assert all(s < 5 for s in seconds.values()), seconds  # each well under a second alone; slack for a busy CPU
    return out


def _series(root: Path) -> dict[Path, list[Path]]:
    found: dict[Path, list[Path]] = {}
    for p in sorted(root.rglob("*.dcm")):
        found.setdefault(p.parent, []).append(p)
    return found


def _number(path: Path) -> int:
    return int(re.search(r"(\d+)\.dcm$", path.name).group(1))


@pytest.mark.parametrize("name", ["brain_tumor", "cervical_spine", "abdominal_trauma", "lumbar_spine"])
def test_series_have_consistent_geometry_and_one_is_shuffled(built, name):
    shuffled = 0
    for folder, files in _series(built[name]).items():
        heads = [pydicom.dcmread(p) for p in files]
        assert all(h.InstanceNumber == _number(p) for h, p in zip(heads, files, strict=True)), folder
        assert len({h.SeriesInstanceUID for h in heads}) == 1 and len({h.StudyInstanceUID for h in heads}) == 1
        assert len({tuple(h.ImageOrientationPatient) for h in heads}) == 1, folder
        assert len({h.pixel_array.shape for h in heads}) == 1 and heads[0].pixel_array.ndim == 2
        assert heads[0].Modality in ("CT", "MR") and heads[0].SeriesDescription
        assert all(float(h.PixelSpacing[0]) > 0 and float(h.SliceThickness) > 0 for h in heads)
        assert all(float(h.RescaleSlope) == 1 for h in heads)
        n = normal(tuple(float(v) for v in heads[0].ImageOrientationPatient))
        pos = np.array([[float(v) for v in h.ImagePositionPatient] for h in heads])
        along = pos @ n
        order = np.argsort(along)
        steps = np.diff(along[order])
        assert np.allclose(steps, steps[0]) and steps[0] > 0, folder  # distinct, evenly spaced
        off = pos[order] - pos[order][0]  # moving along the normal only
        assert np.allclose(off - np.outer(off @ n, n), 0, atol=1e-3), folder
        by_instance = list(np.argsort([h.InstanceNumber for h in heads]))
        if by_instance not in (list(order), list(order[::-1])):
            shuffled += 1
    assert shuffled >= 1
    names = [p.name for files in _series(built[name]).values() for p in files]
    assert any(_number(Path(n)) >= 10 for n in names)  # name order differs from number order somewhere


def test_brain_tumor_layout(built):
    root = built["brain_tumor"]
    df = pd.read_csv(root / "train_labels.csv")
    assert list(df.columns) == ["BraTS21ID", "MGMT_value"] and sorted(df["MGMT_value"].value_counts()) == [4, 4]
    for i in df["BraTS21ID"]:
        assert sorted(p.name for p in (root / "train" / f"{i:05d}").iterdir()) == ["FLAIR", "T1w", "T1wCE", "T2w"]
        head = pydicom.dcmread(next((root / "train" / f"{i:05d}" / "T2w").glob("Image-*.dcm")))
        assert (head.SeriesDescription, head.Modality) == ("T2w", "MR")
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sample.columns) == ["BraTS21ID", "MGMT_value"]
    assert all((root / "test" / f"{i:05d}" / "FLAIR").is_dir() for i in sample["BraTS21ID"])


def test_cervical_spine_layout(built):
    root = built["cervical_spine"]
    df = pd.read_csv(root / "train.csv", dtype=str)
    assert list(df.columns) == ["StudyInstanceUID", "patient_overall", *[f"C{v}" for v in range(1, 8)]]
    assert sorted(df["patient_overall"].value_counts()) == [4, 4]
    assert all((root / "train_images" / uid).is_dir() for uid in df["StudyInstanceUID"])
    assert list(pd.read_csv(root / "train_bounding_boxes.csv").columns) == [
        "StudyInstanceUID", "x", "y", "width", "height", "slice_number"]
    test = pd.read_csv(root / "test.csv", dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(test.columns) == ["row_id", "StudyInstanceUID", "prediction_type"]
    assert list(sample.columns) == ["row_id", "fractured"] and list(sample["row_id"]) == list(test["row_id"])
    assert (test["StudyInstanceUID"] + "_" + test["prediction_type"] == test["row_id"]).all()
    head = pydicom.dcmread(next((root / "train_images" / df["StudyInstanceUID"][0]).glob("*.dcm")))
    assert (head.Modality, float(head.RescaleIntercept)) == ("CT", -1024)


def test_abdominal_trauma_layout(built):
    root = built["abdominal_trauma"]
    df = pd.read_csv(root / "train.csv")
    assert df.columns[0] == "patient_id" and df.columns[-1] == "any_injury" and len(df.columns) == 15
    assert sorted(df["any_injury"].value_counts()) == [5, 5]
    meta = pd.read_csv(root / "train_series_meta.csv")
    assert list(meta.columns) == ["patient_id", "series_id", "aortic_hu", "incomplete_organ"]
    assert meta["patient_id"].duplicated().any()  # some patients scanned twice
    for pid, sid in meta[["patient_id", "series_id"]].itertuples(index=False):
        assert any((root / "train_images" / str(pid) / str(sid)).glob("*.dcm"))
    head = pydicom.dcmread(next((root / "train_images").rglob("*.dcm")))
    assert head.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless and head.pixel_array.shape == (32, 32)
    assert list(pd.read_csv(root / "sample_submission.csv").columns) == list(df.columns[:-1])


def test_lumbar_spine_layout(built):
    root = built["lumbar_spine"]
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert df.columns[0] == "study_id" and len(df.columns) == 26
    values = set(df.iloc[:, 1:].to_numpy().ravel())
    assert {"Normal/Mild", "Moderate", "Severe", ""} <= values <= {"Normal/Mild", "Moderate", "Severe", ""}
    series = pd.read_csv(root / "train_series_descriptions.csv", dtype=str)
    assert set(series["series_description"]) == {"Sagittal T1", "Sagittal T2/STIR", "Axial T2"}
    for study, sid, desc in series.itertuples(index=False):
        head = pydicom.dcmread(next((root / "train_images" / study / sid).glob("*.dcm")))
        assert head.SeriesDescription == desc
    coords = pd.read_csv(root / "train_label_coordinates.csv", dtype=str)
    assert list(coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert (root / "train_images" / coords["study_id"][0] / coords["series_id"][0]
            / f"{coords['instance_number'][0]}.dcm").is_file()
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["row_id", "normal_mild", "moderate", "severe"] and len(sample) == 2 * 25
    assert sample["row_id"][0] == "44036939_spinal_canal_stenosis_l1_l2"


def test_mammography_layout(built):
    root = built["mammography"]
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert list(df.columns[:7]) == ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer"]
    for p, i, lat, view in df[["patient_id", "image_id", "laterality", "view"]].itertuples(index=False):
        head = pydicom.dcmread(root / "train_images" / p / f"{i}.dcm")
        assert (head.Modality, head.ImageLaterality, head.ViewPosition) == ("MG", lat, view)
    breasts = df.groupby(["patient_id", "laterality"])["cancer"].first()
    assert (breasts == "1").sum() == 4 and len(breasts) == 20
    test = pd.read_csv(root / "test.csv", dtype=str)
    assert (test["patient_id"] + "_" + test["laterality"] == test["prediction_id"]).all()
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["prediction_id", "cancer"] and set(sample["prediction_id"]) == set(
        test["prediction_id"])


def test_ubc_ocean_layout(built):
    import cv2

    root = built["ubc_ocean"]
    df = pd.read_csv(root / "train.csv")
    assert list(df.columns) == ["image_id", "label", "image_width", "image_height", "is_tma"]
    assert sorted(df["label"].unique()) == ["CC", "EC", "HGSC", "LGSC", "MC"] and df["label"].value_counts().min() == 2
    for i, w, h, tma in df[["image_id", "image_width", "image_height", "is_tma"]].itertuples(index=False):
        img = cv2.imread(str(root / "train_images" / f"{i}.png"))
        assert img.shape == (h, w, 3)
        assert (root / "train_thumbnails" / f"{i}_thumbnail.png").is_file() != tma
    assert list(pd.read_csv(root / "sample_submission.csv").columns) == ["image_id", "label"]


@pytest.mark.parametrize("name", list(MIL_CONFIGS))
def test_the_replica_configs_load(built, name):
    cfg = load_config(None, mil_overrides(name, built[name]))
    assert cfg.mil.source == MIL_CONFIGS[name]["mil.source"]
    assert Path(cfg.data.root, cfg.data.train_csv).is_file()
