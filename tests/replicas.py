"""Miniature replicas of the four real downloads: the same folder trees, file names, CSV headers, image
formats and quirks, with a few dozen tiny images each, so the shipped configs run on them unchanged
(but for `data.root` and the FAST sizes).

- APTOS 2019: train.csv (id_code, diagnosis), test.csv, sample_submission.csv; RGB PNGs of several
  sizes named by hex id. train.csv carries a UTF-8 BOM (as Excel-saved copies do).
- DR 2015: trainLabels.csv (image, level) with CRLF line ends, sampleSubmission.csv; JPEGs named
  <patient>_left / <patient>_right, wider than tall with the eye's disc cut at top and bottom.
- Chest X-ray (Pneumonia): chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg, mostly grayscale with
  some RGB JPEGs, NORMAL as IM-xxxx-yyyy / NORMAL2-IM-xxxx-yyyy, PNEUMONIA as personN_bacteria_M /
  personN_virus_M; the tree unzipped twice (chest_xray/chest_xray/...) and __MACOSX/._* debris.
- C-NMC 2019: C-NMC_Leukemia/training_data/fold_{0,1,2}/{all,hem}/UID_<subject>_<n>_<m>_<class>.bmp,
  validation_data/C-NMC_test_prelim_phase_data/<n>.bmp with C-NMC_test_prelim_phase_data_labels.csv
  (Patient_ID, new_names, labels; 1 = ALL), testing_data/C-NMC_test_final_phase_data/<n>.bmp.
- RSNA Pneumonia 2018: stage_2_train_labels.csv (patientId,x,y,width,height,Target) with one row per
  opacity box (a patient repeated, box fields blank for Target 0), stage_2_detailed_class_info.csv,
  stage_2_train_images/<patientId>.dcm and stage_2_test_images/, stage_2_sample_submission.csv
  (patientId,PredictionString). The real files are 1024x1024 8-bit MONOCHROME2; these are 12-bit CR
  chests, MONOCHROME1 and MONOCHROME2, some with a window, some RLE-compressed (made with pydicom).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd


def fundus(rng: np.random.Generator, w: int, h: int, grade: int) -> np.ndarray:
    """An RGB eye's disc on black, brighter with the grade, a few dark 'vessels' and bright 'lesions'."""
    img = np.zeros((h, w, 3), np.uint8)
    r = int(min(w, h * 1.15) / 2)  # taller than the frame: DR 2015 style, cut at top and bottom
    colour = (150 + 15 * grade, 70 + 10 * grade, 30)
    cv2.circle(img, (w // 2, h // 2), r, colour, -1)
    for _ in range(3):
        p = tuple(int(v) for v in rng.integers(0, (w, h)))
        cv2.line(img, (w // 2, h // 2), p, (90, 30, 20), 1)
    for _ in range(grade * 2):
        cv2.circle(img, tuple(int(v) for v in rng.integers((w // 4, h // 4), (3 * w // 4, 3 * h // 4))), 1,
                   (250, 240, 120), -1)
    noise = rng.normal(0, 6, img.shape)
    return np.where(img > 0, np.clip(img + noise, 0, 255), 0).astype(np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray, params: tuple = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))


def _write_csv(df: pd.DataFrame, path: Path, bom: bool = False, crlf: bool = False) -> None:
    text = df.to_csv(index=False, lineterminator="\r\n" if crlf else "\n")
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())


def aptos2019(root: Path, seed: int = 0) -> Path:
    """36 training images (grades 0-4 in APTOS's proportions, at least 4 each) and 8 test images."""
    rng = np.random.default_rng(seed)
    counts = {0: 14, 1: 5, 2: 9, 3: 4, 4: 4}
    sizes = [(48, 36), (40, 40), (44, 32)]  # the real ones range from 474x358 to 4288x2848
    rows = []
    for grade, n in counts.items():
        for _ in range(n):
            i = rng.bytes(6).hex()
            w, h = sizes[len(rows) % len(sizes)]
            _write_rgb(root / "train_images" / f"{i}.png", fundus(rng, w, h, grade))
            rows.append((i, grade))
    _write_csv(pd.DataFrame(rows, columns=["id_code", "diagnosis"]), root / "train.csv", bom=True)
    test = [rng.bytes(6).hex() for _ in range(8)]
    for k, i in enumerate(test):
        _write_rgb(root / "test_images" / f"{i}.png", fundus(rng, *sizes[k % 3], k % 5))
    _write_csv(pd.DataFrame({"id_code": test}), root / "test.csv")
    _write_csv(pd.DataFrame({"id_code": test, "diagnosis": 0}), root / "sample_submission.csv")
    return root


def dr2015(root: Path, seed: int = 0) -> Path:
    """20 patients x 2 eyes (both eyes of a patient usually share a grade) and 6 test patients."""
    rng = np.random.default_rng(seed)
    patients = [10, 13, 15, 16, 17, 19, 20, 22, 23, 25, 30, 31, 40, 41, 44, 45, 50, 51, 60, 61]
    grades = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4]
    rows = []
    for pid, g in zip(patients, grades, strict=True):
        for eye in ("left", "right"):
            name = f"{pid}_{eye}"
            grade = g if eye == "left" or pid % 3 else max(0, g - 1)
            _write_rgb(root / "train" / f"{name}.jpeg", fundus(rng, 72, 48, grade), (cv2.IMWRITE_JPEG_QUALITY, 90))
            rows.append((name, grade))
    _write_csv(pd.DataFrame(rows, columns=["image", "level"]), root / "trainLabels.csv", crlf=True)
    test = [f"{pid}_{eye}" for pid in (1, 2, 3, 5, 6, 8) for eye in ("left", "right")]
    for name in test:
        _write_rgb(root / "test" / f"{name}.jpeg", fundus(rng, 72, 48, int(rng.integers(0, 5))))
    _write_csv(pd.DataFrame({"image": test, "level": 0}), root / "sampleSubmission.csv", crlf=True)
    return root


def _xray(rng: np.random.Generator, sick: bool, size: int = 40) -> np.ndarray:
    """A grey chest: two dark lungs in a lighter body, cloudy patches when `sick`, black border."""
    img = np.full((size, size), 30, np.uint8)
    cv2.rectangle(img, (3, 2), (size - 4, size - 3), 150, -1)
    for cx in (size // 3, 2 * size // 3):
        cv2.ellipse(img, (cx, size // 2), (size // 8, size // 3), 0, 0, 360, 60, -1)
    if sick:
        for _ in range(3):
            cv2.circle(img, tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2)), 3, 200, -1)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def chest_xray(root: Path, seed: int = 0) -> Path:
    """train (24), val (4), test (8), each NORMAL + PNEUMONIA; every 5th file an RGB JPEG."""
    rng = np.random.default_rng(seed)
    normal = ["IM-0115-0001", "IM-0115-0002", "IM-0117-0001", "IM-0119-0001", "IM-0122-0001",
              "NORMAL2-IM-0381-0001", "NORMAL2-IM-0382-0001", "NORMAL2-IM-0383-0001"]
    pneumonia = ["person1_bacteria_1", "person1_bacteria_2", "person1_virus_6", "person3_bacteria_10",
                 "person3_bacteria_11", "person7_virus_14", "person8_bacteria_37", "person10_virus_35",
                 "person11_bacteria_45", "person12_virus_50", "person13_bacteria_49", "person14_virus_44",
                 "person14_bacteria_70", "person15_virus_47"]
    split = {"train": (normal[:8], pneumonia[:12]),  # with val: 24, as the real 5,216 + 16
             "val": (["NORMAL2-IM-1427-0001", "NORMAL2-IM-1430-0001"],
                     ["person1946_bacteria_4874", "person1952_bacteria_4883"]),
             "test": (["IM-0001-0001", "IM-0003-0001", "NORMAL2-IM-0086-0001", "IM-0005-0001"],
                      ["person100_bacteria_475", "person101_bacteria_484", "person1_virus_9", "person103_virus_210"])}
    k = 0
    for part, (norm, pneu) in split.items():
        for cls, names in (("NORMAL", norm), ("PNEUMONIA", pneu)):
            for name in names:
                gray = _xray(rng, cls == "PNEUMONIA")
                path = root / "chest_xray" / part / cls / f"{name}.jpeg"
                path.parent.mkdir(parents=True, exist_ok=True)
                if k % 5 == 4:  # a few are stored as RGB JPEGs, as in the real data
                    tint = np.stack([gray, gray, np.clip(gray.astype(int) + 8, 0, 255).astype(np.uint8)], -1)
                    _write_rgb(path, tint)
                else:
                    assert cv2.imwrite(str(path), gray)
                k += 1
                copy = root / "chest_xray" / "chest_xray" / part / cls / path.name  # the tree zipped twice
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_bytes(path.read_bytes())
                junk = root / "chest_xray" / "__MACOSX" / "chest_xray" / part / cls / f"._{path.name}"
                junk.parent.mkdir(parents=True, exist_ok=True)
                junk.write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble resource fork, not an image
    (root / "chest_xray" / "train" / ".DS_Store").write_bytes(bytes(16))
    return root


def _cell(rng: np.random.Generator, blast: bool, size: int = 45) -> np.ndarray:
    """A stained cell on black: ALL blasts larger with a bigger purple nucleus."""
    img = np.zeros((size, size, 3), np.uint8)
    r = size // 3 if blast else size // 4
    cv2.circle(img, (size // 2, size // 2), r, (200, 160, 200), -1)
    nucleus = (size // 2 + int(rng.integers(-2, 3)), size // 2)
    cv2.circle(img, nucleus, int(r * (0.8 if blast else 0.55)), (120, 40, 150), -1)
    noise = rng.normal(0, 6, img.shape)
    return np.where(img > 0, np.clip(img + noise, 0, 255), 0).astype(np.uint8)


def cnmc2019(root: Path, seed: int = 0) -> Path:
    """3 folds x (ALL subjects 11, 12, 13.. and HEM subjects H10, H11..) with 2-3 cells each; 8 labelled
    preliminary-test cells and 5 unlabelled final-test cells."""
    rng = np.random.default_rng(seed)
    base = root / "C-NMC_Leukemia"
    subjects = {0: (["11", "12"], ["H10"]), 1: (["13", "14"], ["H11"]), 2: (["15"], ["H12", "H13"])}
    for fold, (alls, hems) in subjects.items():
        for cls, ids in (("all", alls), ("hem", hems)):
            for sub in ids:
                for n in range(3 if cls == "all" else 4):
                    name = f"UID_{sub}_{n + 1}_{int(rng.integers(1, 9))}_{cls}.bmp"
                    _write_rgb(base / "training_data" / f"fold_{fold}" / cls / name, _cell(rng, cls == "all"))
    prelim = base / "validation_data" / "C-NMC_test_prelim_phase_data"
    rows = []
    for n in range(1, 9):
        blast = n % 3 != 0
        sub = f"{50 + n}" if blast else f"H{20 + n}"
        _write_rgb(prelim / f"{n}.bmp", _cell(rng, blast))
        rows.append((f"UID_{sub}_{n}_1_{'all' if blast else 'hem'}.bmp", f"{n}.bmp", int(blast)))
    _write_csv(pd.DataFrame(rows, columns=["Patient_ID", "new_names", "labels"]),
               base / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv")
    for n in range(1, 6):
        _write_rgb(base / "testing_data" / "C-NMC_test_final_phase_data" / f"{n}.bmp", _cell(rng, n % 2 == 0))
    return root


def write_cr(path: Path, grey: np.ndarray, patient: str, mono1: bool, window: bool, rle: bool) -> None:
    """A 12-bit CR chest DICOM (explicit VR little endian, or RLE) of an 8-bit grey image: stored values
    grey * 16 + noise, inverted for MONOCHROME1, with a window spanning the data when `window`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    rng = np.random.default_rng(abs(hash(patient)) % 2**32)
    stored = np.clip(grey.astype(np.int32) * 16 + rng.integers(0, 16, grey.shape), 0, 4095).astype(np.uint16)
    if mono1:
        stored = 4095 - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = patient, patient, "CR", "CHEST"
    ds.ViewPosition, ds.PixelSpacing = ("PA" if mono1 else "AP"), [0.168, 0.168]
    ds.set_pixel_data(stored, "MONOCHROME1" if mono1 else "MONOCHROME2", 12)
    if window:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if rle:
        ds.compress(RLELossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def rsna_pneumonia(root: Path, seed: int = 0) -> Path:
    """16 training patients (6 with 1-3 opacity boxes, one row each) and 6 test patients."""
    rng = np.random.default_rng(seed)

    def pid() -> str:
        h = rng.bytes(16).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    rows, info = [], []
    for k in range(16):
        p, boxes = pid(), [0, 1, 0, 2, 0, 3, 0, 0][k % 8]
        write_cr(root / "stage_2_train_images" / f"{p}.dcm", _xray(rng, boxes > 0, 48), p, mono1=k % 2 == 0,
                 window=k % 3 == 0, rle=k % 4 == 1)
        for _ in range(boxes):
            x, y = (int(v) for v in rng.integers(100, 600, 2))
            rows.append((p, float(x), float(y), float(rng.integers(100, 300)), float(rng.integers(100, 400)), 1))
            info.append((p, "Lung Opacity"))
        if not boxes:
            rows.append((p, None, None, None, None, 0))
            info.append((p, "Normal" if k % 3 else "No Lung Opacity / Not Normal"))
    _write_csv(pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]),
               root / "stage_2_train_labels.csv")
    _write_csv(pd.DataFrame(info, columns=["patientId", "class"]), root / "stage_2_detailed_class_info.csv")
    test = [pid() for _ in range(6)]
    for k, p in enumerate(test):
        write_cr(root / "stage_2_test_images" / f"{p}.dcm", _xray(rng, k % 2 == 1, 48), p, mono1=k % 2 == 0,
                 window=False, rle=False)
    _write_csv(pd.DataFrame({"patientId": test, "PredictionString": "0.5 0 0 100 100"}),
               root / "stage_2_sample_submission.csv")
    return root


BUILDERS = {"aptos2019": aptos2019, "dr2015": dr2015, "chest_xray": chest_xray, "cnmc2019": cnmc2019}
# rsna_pneumonia is not in BUILDERS: its submission holds probabilities, not labels (tests/test_dicom.py runs it)


def build(name: str, root: Path) -> Path:
    """The replica of competition `name` (a config name in configs/) under `root`."""
    return BUILDERS[name](root)


def overrides(root: Path, out: Path, fast: list[str]) -> list[str]:
    """The shipped config made tiny: the conftest FAST sizes, 4 images a batch, no pretrained download."""
    return [*fast, "batch_size=4", "model.pretrained=null", f"data.root={root}", f"out_dir={out}"]
