"""Miniature replicas of the downloads where one competition row is many images (issue 27: studies, series,
views and tiles), with the real folder trees, file names and CSV headers, and DICOM series whose headers
carry real geometry: ImagePositionPatient moving along the normal of ImageOrientationPatient (row x column
direction cosines, DICOM PS3.3 C.7.6.2.1.1), PixelSpacing, SliceThickness, InstanceNumber, Rescale
Slope/Intercept, Study/SeriesInstanceUID, SeriesDescription. In at least one series per replica the
InstanceNumber (and the file name) is not in slice order, so slice ordering is put to the test, and file
names run past 9 (1.dcm, 10.dcm, 2.dcm in name order). Each replica has two classes balanced for a 2-fold
split and a learnable signal (a bright blob in the positives' slices); each builds in well under a second.

- RSNA-MICCAI 2021 brain tumour (MGMT, AUC): train_labels.csv (BraTS21ID unpadded, MGMT_value),
  train/<BraTS21ID:05d>/{FLAIR,T1w,T1wCE,T2w}/Image-<n>.dcm (MR; the sequences in different planes and
  sizes, SeriesDescription the sequence name), test/ alike, sample_submission.csv (BraTS21ID,MGMT_value 0.5).
- RSNA 2022 cervical spine (weighted multi-label log loss): train.csv (StudyInstanceUID, patient_overall,
  C1..C7), train_bounding_boxes.csv (StudyInstanceUID,x,y,width,height,slice_number), train_images/<uid>/<n>.dcm
  (axial CT, instance 1 at the head: positions falling along the normal), test.csv (row_id, StudyInstanceUID,
  prediction_type), test_images/, sample_submission.csv (row_id,fractured; long: `<uid>_C1`).
- RSNA 2023 abdominal trauma (weighted log losses + any_injury): train.csv (patient_id, 13 one-hot columns
  of bowel/extravasation healthy/injury and kidney/liver/spleen healthy/low/high, any_injury),
  train_series_meta.csv (patient_id,series_id,aortic_hu,incomplete_organ; one or two series per patient),
  train_images/<patient_id>/<series_id>/<n>.dcm (CT, RLE lossless, as the host re-encoded them; signed and
  unsigned pixels), image_level_labels.csv, test_series_meta.csv, test_images/, sample_submission.csv
  (patient_id + the 13 columns).
- RSNA 2024 lumbar spine (weighted log loss, 1/2/4): train.csv (study_id + 25 condition_level columns of
  Normal/Mild, Moderate, Severe; blank in places), train_label_coordinates.csv (study_id, series_id,
  instance_number, condition, level, x, y), train_series_descriptions.csv (Sagittal T1, Sagittal T2/STIR,
  Axial T2), train_images/<study_id>/<series_id>/<instance_number>.dcm (MR), test_series_descriptions.csv,
  test_images/, sample_submission.csv (row_id `<study_id>_<condition>_<level>`, normal_mild, moderate, severe).
- RSNA 2023 screening mammography (probabilistic F1): train.csv (site_id, patient_id, image_id, laterality,
  view, age, cancer, biopsy, invasive, BIRADS, implant, density, machine_id, difficult_negative_case),
  train_images/<patient_id>/<image_id>.dcm (MG, CC and MLO of each breast, MONOCHROME1 and 2, some RLE),
  test.csv (with prediction_id = <patient_id>_<laterality>), test_images/, sample_submission.csv
  (prediction_id,cancer).
- UBC-OCEAN 2023 (balanced accuracy): train.csv (image_id,label,image_width,image_height,is_tma; labels CC,
  EC, HGSC, LGSC, MC), train_images/<image_id>.png (whole slides wider than tall, tissue on white; TMA cores
  smaller), train_thumbnails/<image_id>_thumbnail.png (slides only), test.csv (image_id,image_width,
  image_height), test_images/, test_thumbnails/, sample_submission.csv (image_id,label).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from replicas import _uid, _write_csv, write_cr

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient: rows along +x, columns along +y
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
CT_STORAGE, MR_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"  # SOP classes (PS3.4 B.5)
MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def normal(orientation: tuple[float, ...]) -> np.ndarray:
    """The slice normal: the row direction cosine x the column direction cosine (PS3.3 C.7.6.2.1.1)."""
    return np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))


def write_series(folder: Path, volume: np.ndarray, *, modality: str, patient: str, study_uid: str,
                 series_uid: str, description: str, orientation: tuple[float, ...] = AXIAL,
                 origin: tuple[float, float, float] = (-100.0, -120.0, 50.0), spacing: float = 0.8,
                 thickness: float = 2.5, step: float = 2.5, intercept: float = 0.0,
                 instances: list[int] | None = None, name: str = "{n}.dcm", rle: bool = False) -> list[Path]:
    """One DICOM series: slice k of `volume` (K, H, W) (stored values: int16 or uint16) at
    origin + k * step * normal(orientation) mm, with InstanceNumber `instances[k]` (default k + 1; a
    permutation writes the files out of slice order) in `folder`/`name` (formatted with n = the instance).
    RescaleSlope 1 and RescaleIntercept `intercept` (CT: HU = stored + intercept). Returns the paths in
    slice order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    folder.mkdir(parents=True, exist_ok=True)
    instances = instances or list(range(1, len(volume) + 1))
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    n_vec = normal(orientation)
    paths = []
    for k, (img, inst) in enumerate(zip(volume, instances, strict=True)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = f"{series_uid}.{inst}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.Modality = patient, patient, modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = study_uid, series_uid, description
        ds.SeriesNumber, ds.InstanceNumber = 1, int(inst)
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.asarray(origin) + k * step * n_vec]
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], thickness
        ds.set_pixel_data(np.ascontiguousarray(img), "MONOCHROME2", 12 if img.dtype == np.uint16 else 16)
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        if modality == "CT":
            ds.RescaleType, ds.WindowCenter, ds.WindowWidth = "HU", 40, 400
        if rle:
            ds.compress(RLELossless)
        path = folder / name.format(n=inst)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _blob(volume: np.ndarray, k0: int, k1: int, cy: int, cx: int, r: int, value: float) -> None:
    """A bright disc of radius r px at (cy, cx) on slices k0..k1-1 (the positives' learnable signal)."""
    yy, xx = np.mgrid[:volume.shape[1], :volume.shape[2]]
    volume[k0:k1, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def _body(rng: np.random.Generator, k: int, size: int, inside: float, outside: float, noise: float) -> np.ndarray:
    """K slices of an ellipse of `inside` on `outside` with Gaussian noise, float (K, size, size)."""
    vol = np.full((k, size, size), outside, float)
    yy, xx = np.mgrid[:size, :size]
    vol[:, ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.46 * size)) ** 2 <= 1] = inside
    return vol + rng.normal(0, noise, vol.shape)


def _shuffled(rng: np.random.Generator, n: int) -> list[int]:
    """Instance numbers 1..n out of slice order (never the identity or its reverse)."""
    while True:
        order = [int(v) + 1 for v in rng.permutation(n)]
        if order not in (list(range(1, n + 1)), list(range(n, 0, -1))):
            return order


# ------------------------------------------------------------------ RSNA-MICCAI 2021 brain tumour
BRAIN_SEQUENCES = {  # sequence -> (plane, side px, slices): the real sequences come in different planes
    "FLAIR": (AXIAL, 32, 8), "T1w": (SAGITTAL, 24, 6), "T1wCE": (AXIAL, 32, 11), "T2w": (CORONAL, 32, 7)}


def _brain_study(root: Path, rng: np.random.Generator, i: int, positive: bool, shuffle: bool) -> None:
    study = f"1.2.826.0.1.3680043.8.498.{int(rng.integers(10**10, 10**11))}"
    for seq, (plane, side, k) in BRAIN_SEQUENCES.items():
        vol = _body(rng, k, side, 400, 0, 20)
        if positive and seq in ("FLAIR", "T1wCE"):
            _blob(vol, k // 3, k - k // 3, side // 2 + 3, side // 2 - 4, side // 6, 1200)
        vol = np.clip(vol, 0, 4095).astype(np.uint16)
        instances = _shuffled(rng, k) if shuffle and seq == "T1wCE" else None
        write_series(root / f"{i:05d}" / seq, vol, modality="MR", patient=f"{i:05d}", study_uid=study,
                     series_uid=_uid(rng)[:56], description=seq, orientation=plane, spacing=240 / side,
                     thickness=5.0, step=6.5, instances=instances, name="Image-{n}.dcm")


def brain_tumor(root: Path, seed: int = 0) -> Path:
    """8 training patients (MGMT 1: 4, 0: 4) and 2 test patients, four MR sequences each (the positives'
    FLAIR and T1wCE hold a bright blob); patient 00002's T1wCE files are out of slice order."""
    rng = np.random.default_rng(seed)
    ids, labels = [0, 2, 3, 5, 6, 8, 9, 11], [1, 1, 0, 1, 0, 0, 1, 0]
    for i, y in zip(ids, labels, strict=True):
        _brain_study(root / "train", rng, i, bool(y), shuffle=i == 2)
    _write_csv(pd.DataFrame({"BraTS21ID": ids, "MGMT_value": labels}), root / "train_labels.csv")
    test = [1, 13]
    for k, i in enumerate(test):
        _brain_study(root / "test", rng, i, k == 0, shuffle=False)
    _write_csv(pd.DataFrame({"BraTS21ID": test, "MGMT_value": 0.5}), root / "sample_submission.csv")
    return root


# ------------------------------------------------------------------ RSNA 2022 cervical spine
VERTEBRAE = [f"C{v}" for v in range(1, 8)]


def _rsna22_uid(rng: np.random.Generator) -> str:
    return f"1.2.826.0.1.3680043.{int(rng.integers(1000, 32000))}"  # the competition's short study UIDs


def _spine_ct(root: Path, rng: np.random.Generator, uid: str, broken: list[int], order: str) -> list[tuple]:
    """One axial CT series, head first (instance 1 at the top: z falls along the instances); the blob of a
    fractured vertebra v sits on the slices of its level. Returns the bounding-box rows."""
    k = 12
    vol = _body(rng, k, 32, 40, -1000, 15)  # HU
    boxes = []
    for v in broken:
        s = min(k - 1, (v - 1) * k // 7)
        _blob(vol, s, s + 2, 16, 14, 4, 1200)
        boxes += [(uid, 10.0 * 14 - 40, 10.0 * 16 - 40, 80.0, 80.0, s + d + 1) for d in range(2)]
    stored = np.clip(vol + 1024, 0, 4095).astype(np.uint16)
    instances = {"head_first": None, "shuffled": _shuffled(rng, k)}[order]
    # head first: slice k at z = 0 - 2.5 k, so the spatial order (along +z) is the reverse of the instances
    write_series(root / uid, stored, modality="CT", patient=uid, study_uid=uid, series_uid=f"{uid}.1",
                 description="C-SPINE", origin=(-60.0, -60.0, 0.0), spacing=3.75, thickness=1.0, step=-2.5,
                 intercept=-1024, instances=instances)
    return boxes


def cervical_spine(root: Path, seed: int = 0) -> Path:
    """8 training studies (4 with 1-2 fractured vertebrae, patient_overall 1) and 2 test studies, 12 axial
    CT slices each; one study's instance numbers shuffled."""
    rng = np.random.default_rng(seed)
    fractures = [[1], [], [2, 5], [], [7], [], [3], []]
    rows, boxes = [], []
    for k, broken in enumerate(fractures):
        uid = _rsna22_uid(rng)
        boxes += _spine_ct(root / "train_images", rng, uid, broken, "shuffled" if k == 1 else "head_first")
        rows.append((uid, int(bool(broken)), *(int(v in broken) for v in range(1, 8))))
    _write_csv(pd.DataFrame(rows, columns=["StudyInstanceUID", "patient_overall", *VERTEBRAE]), root / "train.csv")
    _write_csv(pd.DataFrame(boxes, columns=["StudyInstanceUID", "x", "y", "width", "height", "slice_number"]),
               root / "train_bounding_boxes.csv")
    test = [_rsna22_uid(rng) for _ in range(2)]
    for k, uid in enumerate(test):
        _spine_ct(root / "test_images", rng, uid, [4] if k == 0 else [], "head_first")
    types = [*VERTEBRAE, "patient_overall"]
    long = [(f"{uid}_{t}", uid, t) for uid in test for t in types]
    _write_csv(pd.DataFrame(long, columns=["row_id", "StudyInstanceUID", "prediction_type"]), root / "test.csv")
    _write_csv(pd.DataFrame({"row_id": [r for r, _, _ in long], "fractured": 0.5}), root / "sample_submission.csv")
    return root


# ------------------------------------------------------------------ RSNA 2023 abdominal trauma
TRAUMA_TARGETS = {"bowel": ["healthy", "injury"], "extravasation": ["healthy", "injury"],
                  "kidney": ["healthy", "low", "high"], "liver": ["healthy", "low", "high"],
                  "spleen": ["healthy", "low", "high"]}
TRAUMA_COLUMNS = [f"{t}_{c}" for t, cs in TRAUMA_TARGETS.items() for c in cs]  # the 13 columns, in order
ORGAN_AT = {"bowel": (20, 16), "extravasation": (16, 16), "kidney": (22, 8), "liver": (12, 10), "spleen": (12, 22)}


def _trauma_series(root: Path, rng: np.random.Generator, pid: int, sid: int, injuries: dict[str, int],
                   signed: bool, shuffle: bool) -> None:
    k = 8
    vol = _body(rng, k, 32, 30, -1000, 15)
    for organ, grade in injuries.items():
        cy, cx = ORGAN_AT[organ]
        _blob(vol, 2, k - 2, cy, cx, 2 + grade, 300 + 500 * grade)
    # the host re-encoded every file as RLE lossless; some scanners store signed pixels (intercept 0 there)
    stored = (np.clip(vol, -2000, 2000).astype(np.int16) if signed
              else np.clip(vol + 1024, 0, 4095).astype(np.uint16))
    study = f"1.2.123.12345.1.2.3.{pid}"
    write_series(root / str(pid) / str(sid), stored, modality="CT", patient=str(pid), study_uid=study,
                 series_uid=f"{study}.{sid}", description="ABD/PEL", spacing=12.0, thickness=5.0, step=5.0,
                 intercept=0 if signed else -1024, origin=(-190.0, -190.0, -300.0),
                 instances=[30 + v for v in (_shuffled(rng, k) if shuffle else range(1, k + 1))], rle=True)


def abdominal_trauma(root: Path, seed: int = 0) -> Path:
    """10 training patients (5 injured: each target injured in two of them), 1-2 CT series each (8 slices,
    named by instance numbers from 31, one series out of slice order), and 2 test patients (one with 2 series)."""
    rng = np.random.default_rng(seed)
    injured = [{"bowel": 1}, {}, {"liver": 1, "extravasation": 1}, {}, {"spleen": 2, "kidney": 1}, {},
               {"bowel": 1, "spleen": 1}, {}, {"liver": 2, "kidney": 2, "extravasation": 1}, {}]
    rows, meta, notes = [], [], []
    for k, inj in enumerate(injured):
        pid = 10004 + 97 * k
        onehot = [int(inj.get(t, 0) == i) for t, cs in TRAUMA_TARGETS.items() for i in range(len(cs))]
        rows.append((pid, *onehot, int(bool(inj))))
        for s in range(1 + k % 2):
            sid = int(rng.integers(100, 65000))
            _trauma_series(root / "train_images", rng, pid, sid, inj, signed=k == 3, shuffle=k == 1 and s == 0)
            meta.append((pid, sid, round(float(rng.uniform(100, 400)), 1), int(k == 5)))
            for t in ("bowel", "extravasation"):
                if inj.get(t):
                    notes += [(pid, sid, 33 + d, "Active_Extravasation" if t == "extravasation" else "Bowel")
                              for d in range(3)]
    _write_csv(pd.DataFrame(rows, columns=["patient_id", *TRAUMA_COLUMNS, "any_injury"]), root / "train.csv")
    _write_csv(pd.DataFrame(meta, columns=["patient_id", "series_id", "aortic_hu", "incomplete_organ"]),
               root / "train_series_meta.csv")
    _write_csv(pd.DataFrame(notes, columns=["patient_id", "series_id", "instance_number", "injury_name"]),
               root / "image_level_labels.csv")
    test_meta = []
    for pid, n in ((48843, 2), (50046, 1)):  # test_series_meta.csv: a row per series, 48843 scanned twice
        for _ in range(n):
            sid = int(rng.integers(100, 65000))
            _trauma_series(root / "test_images", rng, pid, sid, {"liver": 1} if n == 1 else {}, signed=False,
                           shuffle=False)
            test_meta.append((pid, sid, 200.0))
    _write_csv(pd.DataFrame(test_meta, columns=["patient_id", "series_id", "aortic_hu"]), root / "test_series_meta.csv")
    prior = [round(1 / len(cs), 4) for cs in TRAUMA_TARGETS.values() for _ in cs]
    _write_csv(pd.DataFrame([(p, *prior) for p in (48843, 50046)], columns=["patient_id", *TRAUMA_COLUMNS]),
               root / "sample_submission.csv")
    return root


# ------------------------------------------------------------------ RSNA 2024 lumbar spine
LUMBAR_CONDITIONS = ["spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
                     "left_subarticular_stenosis", "right_subarticular_stenosis"]
LUMBAR_LEVELS = ["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"]
LUMBAR_COLUMNS = [f"{c}_{lv}" for c in LUMBAR_CONDITIONS for lv in LUMBAR_LEVELS]  # train.csv's 25, in order
LUMBAR_SEVERITY = ["Normal/Mild", "Moderate", "Severe"]
LUMBAR_SERIES = {"Sagittal T1": (SAGITTAL, 8), "Sagittal T2/STIR": (SAGITTAL, 6), "Axial T2": (AXIAL, 10)}


def _lumbar_study(root: Path, rng: np.random.Generator, study: int, grades: list[int], shuffle: bool) -> list[tuple]:
    """The three series of a study; a graded level is a blob (brighter with the grade) at the level's height.
    Returns (series_id, description, rows of train_label_coordinates) per series."""
    out = []
    for desc, (plane, k) in LUMBAR_SERIES.items():
        sid = int(rng.integers(10**8, 4 * 10**9))
        vol = _body(rng, k, 32, 300, 0, 15)
        coords = []
        for j, g in enumerate(grades):
            cond, lv = divmod(j, 5)
            if g and (desc == "Axial T2") == (cond >= 3):  # subarticular: axial; the rest: sagittal
                y, x = 6 + 5 * lv, 12 + 3 * cond
                _blob(vol, 1, k - 1, y, x, 2, 600 + 300 * g)
                coords.append((study, sid, k // 2, LUMBAR_CONDITIONS[cond].replace("_", " ").title(),
                               LUMBAR_LEVELS[lv].replace("_", "/").upper(), 8.0 * x, 8.0 * y))
        instances = _shuffled(rng, k) if shuffle and desc == "Sagittal T2/STIR" else None
        write_series(root / str(study) / str(sid), np.clip(vol, 0, 4095).astype(np.uint16), modality="MR",
                     patient=str(study), study_uid=f"1.2.3.{study}", series_uid=f"1.2.3.{study}.{sid}",
                     description=desc, orientation=plane, spacing=8.0, thickness=4.0, step=4.4,
                     instances=instances)
        out.append((sid, desc, coords))
    return out


def lumbar_spine(root: Path, seed: int = 0) -> Path:
    """6 training studies (3 with moderate or severe levels, one study's grades partly blank as in the real
    train.csv) and 2 test studies, three MR series each; one series out of slice order."""
    rng = np.random.default_rng(seed)
    rows, coords, series = [], [], []
    for k in range(6):
        study = 4003253 + 2417 * k
        grades = [0] * 25
        if k % 2 == 0:
            for j in rng.choice(25, 4, replace=False):
                grades[int(j)] = 1 + int(rng.integers(0, 2))
        for sid, desc, c in _lumbar_study(root / "train_images", rng, study, grades, shuffle=k == 1):
            series.append((study, sid, desc))
            coords += c
        labels = [LUMBAR_SEVERITY[g] for g in grades]
        if k == 3:
            labels[20:] = [""] * 5  # a study with unlabelled levels (the real train.csv has blanks)
        rows.append((study, *labels))
    _write_csv(pd.DataFrame(rows, columns=["study_id", *LUMBAR_COLUMNS]), root / "train.csv")
    _write_csv(pd.DataFrame(coords, columns=["study_id", "series_id", "instance_number", "condition", "level", "x",
                                             "y"]), root / "train_label_coordinates.csv")
    _write_csv(pd.DataFrame(series, columns=["study_id", "series_id", "series_description"]),
               root / "train_series_descriptions.csv")
    test_series, sample = [], []
    for study in (44036939, 44036940):
        for sid, desc, _ in _lumbar_study(root / "test_images", rng, study, [0] * 25, shuffle=False):
            test_series.append((study, sid, desc))
        sample += [(f"{study}_{c}", 1 / 3, 1 / 3, 1 / 3) for c in LUMBAR_COLUMNS]
    _write_csv(pd.DataFrame(test_series, columns=["study_id", "series_id", "series_description"]),
               root / "test_series_descriptions.csv")
    _write_csv(pd.DataFrame(sample, columns=["row_id", "normal_mild", "moderate", "severe"]),
               root / "sample_submission.csv")
    return root


# ------------------------------------------------------------------ RSNA 2023 screening mammography
MAMMO_COLUMNS = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
                 "BIRADS", "implant", "density", "machine_id", "difficult_negative_case"]
MAMMO_TEST = ["site_id", "patient_id", "image_id", "laterality", "view", "age", "implant", "machine_id",
              "prediction_id"]


def _breast(rng: np.random.Generator, laterality: str, cancer: bool) -> np.ndarray:
    """An 8-bit grey breast (a half-disc at the chest wall side), with a bright mass when `cancer`."""
    img = np.full((40, 32), 8, np.uint8)
    wall = 0 if laterality == "L" else 31
    cv2.ellipse(img, (wall, 20), (26, 18), 0, -90, 90, 110, -1) if wall == 0 else \
        cv2.ellipse(img, (wall, 20), (26, 18), 0, 90, 270, 110, -1)
    if cancer:
        cv2.circle(img, (wall + (9 if wall == 0 else -9), int(rng.integers(14, 26))), 4, 240, -1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _mammogram(path: Path, rng: np.random.Generator, patient: int, laterality: str, view: str, cancer: bool,
               k: int) -> None:
    """write_cr's 12-bit grey DICOM (MONOCHROME1 at one site, a window, some RLE) made a mammogram: MG,
    ImageLaterality, ViewPosition, the Digital Mammography SOP class."""
    import pydicom

    write_cr(path, _breast(rng, laterality, cancer), str(patient), mono1=k % 3 == 0, window=k % 2 == 0,
             rle=k % 5 == 1)
    ds = pydicom.dcmread(path)
    ds.Modality, ds.BodyPartExamined, ds.ImageLaterality, ds.ViewPosition = "MG", "BREAST", laterality, view
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MG_STORAGE
    ds.save_as(path, enforce_file_format=True)


def mammography(root: Path, seed: int = 0) -> Path:
    """10 training patients x 2 breasts x CC and MLO (one breast with a second CC), 4 breasts with cancer;
    2 test patients. 44 + 8 small DICOMs."""
    rng = np.random.default_rng(seed)
    cancers = {(0, "L"), (3, "R"), (5, "L"), (8, "R")}
    rows, k = [], 0
    for p in range(10):
        patient, site, age = 10006 + 311 * p, 1 + p % 2, 45 + 3 * p
        for lat in ("L", "R"):
            cancer = (p, lat) in cancers
            for view in ("CC", "MLO", *(("CC",) if (p, lat) == (2, "L") else ())):
                image_id = int(rng.integers(10**8, 2 * 10**9))
                _mammogram(root / "train_images" / str(patient) / f"{image_id}.dcm", rng, patient, lat, view,
                           cancer, k)
                birads = "" if k % 4 == 3 else ("0" if cancer else "1")
                rows.append((site, patient, image_id, lat, view, age, int(cancer), int(cancer), int(cancer),
                             birads, 0, "BCD"[k % 3] if k % 5 else "", 49 if site == 1 else 21, "False"))
                k += 1
    _write_csv(pd.DataFrame(rows, columns=MAMMO_COLUMNS), root / "train.csv")
    test = []
    for p, patient in enumerate((10008, 65534)):
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                image_id = int(rng.integers(10**8, 2 * 10**9))
                _mammogram(root / "test_images" / str(patient) / f"{image_id}.dcm", rng, patient, lat, view,
                           p == 0 and lat == "R", k)
                test.append((2, patient, image_id, lat, view, 60, 0, 48, f"{patient}_{lat}"))
                k += 1
    _write_csv(pd.DataFrame(test, columns=MAMMO_TEST), root / "test.csv")
    ids = list(dict.fromkeys(t[-1] for t in test))
    _write_csv(pd.DataFrame({"prediction_id": ids, "cancer": 0}), root / "sample_submission.csv")
    return root


# ------------------------------------------------------------------ UBC-OCEAN 2023
UBC_CLASSES = ["CC", "EC", "HGSC", "LGSC", "MC"]


def _slide(rng: np.random.Generator, cls: int, w: int, h: int, tma: bool) -> np.ndarray:
    """RGB tissue on white: pink patches (a round core for a TMA), with a class-specific texture: dark
    purple nuclei whose number and size grow with the class index."""
    img = np.full((h, w, 3), 245, np.uint8)
    if tma:
        cv2.circle(img, (w // 2, h // 2), min(w, h) // 2 - 4, (200, 150, 210), -1)
    else:
        for _ in range(3):
            c = (int(rng.integers(w // 5, 4 * w // 5)), int(rng.integers(h // 4, 3 * h // 4)))
            cv2.ellipse(img, c, (w // 5, h // 4), int(rng.integers(0, 180)), 0, 360, (205, 140, 200), -1)
    tissue = img[..., 0] < 240
    ys, xs = np.nonzero(tissue)
    for j in rng.choice(len(ys), 12 + 10 * cls, replace=False):
        cv2.circle(img, (int(xs[j]), int(ys[j])), 1 + cls % 3, (90 + 20 * cls, 30, 120), -1)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def ubc_ocean(root: Path, seed: int = 0) -> Path:
    """10 training images (2 per subtype, one of each pair-set a TMA core), whole slides 192x128 px with a
    48x32 thumbnail each, TMAs 96x96 without; 2 test images."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(10):
        image_id, cls, tma = 4 + 62 * k + int(rng.integers(0, 60)), k % 5, k in (3, 8)
        w, h = (96, 96) if tma else (192, 128)
        img = _slide(rng, cls, w, h, tma)
        _write_rgb(root / "train_images" / f"{image_id}.png", img)
        if not tma:
            _write_rgb(root / "train_thumbnails" / f"{image_id}_thumbnail.png", cv2.resize(img, (w // 4, h // 4)))
        rows.append((image_id, UBC_CLASSES[cls], w, h, "True" if tma else "False"))
    _write_csv(pd.DataFrame(rows, columns=["image_id", "label", "image_width", "image_height", "is_tma"]),
               root / "train.csv")
    test = [(41, 192, 128), (66, 96, 96)]
    for k, (image_id, w, h) in enumerate(test):
        img = _slide(rng, 2 * k, w, h, w == h)
        _write_rgb(root / "test_images" / f"{image_id}.png", img)
        if w != h:
            _write_rgb(root / "test_thumbnails" / f"{image_id}_thumbnail.png", cv2.resize(img, (w // 4, h // 4)))
    _write_csv(pd.DataFrame(test, columns=["image_id", "image_width", "image_height"]), root / "test.csv")
    _write_csv(pd.DataFrame({"image_id": [t[0] for t in test], "label": "HGSC"}), root / "sample_submission.csv")
    return root


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


MIL_BUILDERS = {"brain_tumor": brain_tumor, "cervical_spine": cervical_spine, "abdominal_trauma": abdominal_trauma,
                "lumbar_spine": lumbar_spine, "mammography": mammography, "ubc_ocean": ubc_ocean}

# The config overrides each replica needs (docs/config.md's keys and the `mil:` section of the MIL design),
# without data.root (`mil_overrides` adds it). The several-head targets of RSNA 2023 / 2024 are given as
# their columns; their task (multihead, issue 27 item 4) and metric are the lead's to set.
MIL_CONFIGS: dict[str, dict] = {
    "brain_tumor": {
        "data.train_csv": "train_labels.csv", "data.id_column": "BraTS21ID", "data.label_column": "MGMT_value",
        "data.train_images": ["train"], "data.test_images": ["test"], "data.image_ext": ".dcm",
        "data.sample_submission": "sample_submission.csv", "task": "binary", "metric": "auc",
        "predict.output": "prob", "mil.source": "study", "mil.folder": "{BraTS21ID:05d}",
        "mil.series": ["FLAIR", "T1w", "T1wCE", "T2w"]},
    "cervical_spine": {
        "data.train_csv": "train.csv", "data.id_column": "StudyInstanceUID",
        "data.label_columns": ["patient_overall", *VERTEBRAE], "data.train_images": ["train_images"],
        "data.test_images": ["test_images"], "data.image_ext": ".dcm", "data.test_csv": "test.csv",
        "data.sample_submission": "sample_submission.csv", "task": "multilabel", "metric": "rsna2022_cervical",
        "predict.output": "prob", "predict.shape": "long", "mil.source": "series", "mil.folder": "{id}"},
    "abdominal_trauma": {
        "data.train_csv": "train.csv", "data.id_column": "patient_id",
        "data.heads": {t: ["healthy", "injury"] if t in ("bowel", "extravasation") else ["healthy", "low", "high"]
                       for t in ("bowel", "extravasation", "kidney", "liver", "spleen")},
        "data.train_images": ["train_images"], "data.test_images": ["test_images"], "data.image_ext": ".dcm",
        "data.sample_submission": "sample_submission.csv", "task": "multihead", "metric": "rsna2023_trauma",
        "predict.output": "prob", "mil.source": "study", "mil.folder": "{id}", "mil.series": []},
    "lumbar_spine": {
        "data.train_csv": "train.csv", "data.id_column": "study_id", "task": "multihead", "metric": "rsna2024_lumbar",
        "data.heads": {c: ["normal_mild", "moderate", "severe"] for c in LUMBAR_COLUMNS},
        "data.train_images": ["train_images"], "data.test_images": ["test_images"],
        "data.image_ext": ".dcm", "data.sample_submission": "sample_submission.csv", "predict.output": "prob",
        "predict.shape": "long", "mil.source": "study", "mil.folder": "{id}",
        "mil.series": list(LUMBAR_SERIES)},
    "mammography": {
        "data.train_csv": "train.csv", "data.id_column": "image_id", "data.label_column": "cancer",
        "data.group_column": "patient_id", "data.train_images": ["train_images/*"],
        "data.test_images": ["test_images/*"], "data.image_ext": ".dcm", "data.test_csv": "test.csv",
        "data.submission_id_column": "prediction_id", "data.submission_id_parts": ["patient_id", "laterality"],
        "data.sample_submission": "sample_submission.csv", "task": "binary", "metric": "pf1",
        "mil.source": "views", "mil.join": ["patient_id", "laterality"]},
    "ubc_ocean": {
        "data.train_csv": "train.csv", "data.id_column": "image_id", "data.label_column": "label",
        "data.classes": UBC_CLASSES, "data.train_images": ["train_images"], "data.test_images": ["test_images"],
        "data.image_ext": ".png", "data.test_csv": "test.csv", "data.sample_submission": "sample_submission.csv",
        "task": "multiclass", "metric": "balanced_accuracy", "mil.source": "tiles", "mil.pool": "attention"},
}


def mil_overrides(name: str, root: Path) -> list[str]:
    """MIL_CONFIGS[name] with data.root=`root` as `KEY=VALUE` overrides: strings quoted (an unquoted
    "{id}" reads as a mapping), lists in OmegaConf's ['a','b'] form."""
    def value(v) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
        return "[" + ",".join(value(x) for x in v) + "]" if isinstance(v, list) else f"'{v}'" if isinstance(
            v, str) else str(v)

    return [f"data.root={root}", *(f"{k}={value(v)}" for k, v in MIL_CONFIGS[name].items())]
