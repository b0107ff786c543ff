"""Miniature replicas of the real downloads: the same folder trees, file names, CSV headers, image
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
- SIIM-ISIC Melanoma 2020 (binary, AUC): train.csv (image_name, patient_id, sex, age_approx,
  anatom_site_general_challenge, diagnosis, benign_malignant, target; metadata blank in places), test.csv,
  sample_submission.csv (image_name,target), jpeg/{train,test}/ISIC_<7 digits>.jpg. (The real download
  also holds DICOM and TFRecord copies; not replicated.)
- RANZCR CLiP 2021 (multi-label, mean column AUC): train.csv (StudyInstanceUID, 11 labels, PatientID),
  train_annotations.csv, one-channel JPEGs train/<uid>.jpg, test/, sample_submission.csv with 11 columns.
- RSNA Bone Age (kmader/rsna-bone-age; regression, MAE): boneage-training-dataset.csv (id, boneage, male),
  boneage-test-dataset.csv ("Case ID", Sex), grey PNGs in boneage-{training,test}-dataset/ each nested in
  a folder of its own name (as the Kaggle archive unzips); no sample.
- ISIC 2024 (binary, pAUC above 80 % TPR): train-image.hdf5 / test-image.hdf5 holding each image's JPEG bytes
  as a scalar dataset under its isic_id (`h5py.File(path)[isic_id][()]` the bytes; one stored opaque, np.void),
  train-metadata.csv (isic_id, target, patient_id and a few of the real tabular columns; lesion_id and
  iddx_full only there), test-metadata.csv, sample_submission.csv (isic_id,target; 3 rows, as the real one).
- HAM10000 (kmader/skin-cancer-mnist-ham10000; 7 classes, balanced accuracy): HAM10000_metadata.csv
  (lesion_id, image_id, dx, dx_type, age, sex, localization), HAM10000_images_part_{1,2}/ and their
  lower-case copies, hmnist_8_8_L.csv; no test set (ISIC2018_Task3_Test_Input/ on request).
- HMS 2024 (Harmful Brain Activity Classification; six expert votes per window, KL divergence): train.csv
  (eeg_id, eeg_sub_id, eeg_label_offset_seconds, spectrogram_id, spectrogram_sub_id,
  spectrogram_label_offset_seconds, label_id, patient_id, expert_consensus, six *_vote columns) with several
  rows per eeg_id at different offsets, train_spectrograms/<spectrogram_id>.parquet (`time` every 2 s from 1,
  then LL_/RL_/LP_/RP_ x 100 frequencies 0.59..19.92 Hz, NaN stretches in places), test.csv (spectrogram_id,
  eeg_id, patient_id), test_spectrograms/ (10 minutes each), sample_submission.csv (eeg_id + the six votes).
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


def _lesion(rng: np.random.Generator, w: int, h: int, dark: int) -> np.ndarray:
    """A dermoscopic lesion: a brown blob on pink skin, darker and more irregular as `dark` (0-6) grows."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (225, 170, 150)
    centre, axes = (w // 2, h // 2), (w // 4 + int(rng.integers(0, 3)), h // 4)
    cv2.ellipse(img, centre, axes, int(rng.integers(0, 180)), 0, 360, (170 - 18 * dark, 110 - 12 * dark, 80), -1)
    for _ in range(dark):
        cv2.circle(img, tuple(int(v) for v in rng.integers((w // 3, h // 3), (2 * w // 3, 2 * h // 3))), 2,
                   (60, 30, 40), -1)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _isic_patients(rng: np.random.Generator):
    """The ISIC replicas' training images, drawn from `rng` as they are used: 8 patients (IP_<7 digits>) of
    3-4 images each (ISIC_<7 digits>), every 4th image malignant; yields (k, patient, sex, age, name,
    malignant) with k counting the images."""
    k = 0
    for p in range(8):
        pid = f"IP_{int(rng.integers(10**6, 10**7)):07d}"
        sex, age = ("male", "female", "")[p % 3], ("45.0", "60.0", "")[p % 3]
        for _ in range(3 + p % 2):
            yield k, pid, sex, age, f"ISIC_{int(rng.integers(10**6, 10**7)):07d}", k % 4 == 1
            k += 1


def isic2020(root: Path, seed: int = 0, dicoms: bool = False) -> Path:
    """SIIM-ISIC Melanoma 2020: 8 patients (IP_<7 digits>) with 3-4 images each (ISIC_<7 digits>), 7 of
    the 28 malignant; 6 test images. train.csv with all 8 columns (metadata blank in places, as in the
    real file), test.csv, sample_submission.csv (image_name,target), JPEGs in jpeg/train and jpeg/test.
    With `dicoms`, the rest of the real download: the same images as DICOMs in train/ and test/ (grey here)
    and tfrecords/ (placeholder bytes)."""
    rng = np.random.default_rng(seed)
    sites = ["torso", "lower extremity", "upper extremity", "head/neck", ""]
    rows = []
    for k, pid, sex, age, name, mal in _isic_patients(rng):
        diag = "melanoma" if mal else ("unknown", "nevus", "seborrheic keratosis")[k % 3]
        _write_rgb(root / "jpeg" / "train" / f"{name}.jpg", _lesion(rng, 48 + 8 * (k % 2), 36, 6 if mal else 1))
        rows.append((name, pid, sex, age, sites[k % 5], diag, "malignant" if mal else "benign", int(mal)))
    cols = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
            "benign_malignant", "target"]
    _write_csv(pd.DataFrame(rows, columns=cols), root / "train.csv")
    test = [(f"ISIC_{int(rng.integers(10**6, 10**7)):07d}", f"IP_{int(rng.integers(10**6, 10**7)):07d}")
            for _ in range(6)]
    for k, (name, _) in enumerate(test):
        _write_rgb(root / "jpeg" / "test" / f"{name}.jpg", _lesion(rng, 48, 36, 6 * (k % 2)))
    _write_csv(pd.DataFrame([(n, p, "female", "50.0", "torso") for n, p in test], columns=cols[:5]), root / "test.csv")
    _write_csv(pd.DataFrame({"image_name": [n for n, _ in test], "target": 0}), root / "sample_submission.csv")
    if dicoms:
        for split in ("train", "test"):
            for jpg in sorted((root / "jpeg" / split).glob("*.jpg")):
                grey = cv2.imread(str(jpg), cv2.IMREAD_GRAYSCALE)
                write_cr(root / split / f"{jpg.stem}.dcm", grey, jpg.stem, mono1=False, window=False, rle=False)
        (root / "tfrecords").mkdir(parents=True, exist_ok=True)
        for n in range(2):
            (root / "tfrecords" / f"train{n:02d}-14.tfrec").write_bytes(b"\0" * 64)
    return root


ISIC2024_COLUMNS = ["isic_id", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
                    "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_areaMM2", "tbp_lv_location", "attribution",
                    "copyright_license"]  # the test metadata's columns (a few of the real 44); train adds target...


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """`rgb` (H, W, 3) uint8 encoded as a JPEG file's bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_store(path: Path, images: dict[str, bytes], opaque: tuple[str, ...] = ()) -> None:
    """An HDF5 image store as ISIC 2024 ships it: each image's encoded bytes a scalar dataset under its id
    (a fixed-length bytes string; the ids in `opaque` as an opaque np.void, the other form h5py writes)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, data in images.items():
            f.create_dataset(key, data=np.void(data) if key in opaque else np.bytes_(data))  # |S<n>, scalar


def isic2024(root: Path, seed: int = 0) -> Path:
    """ISIC 2024 (SLICE-3D): 8 patients (IP_<7 digits>) with 3-4 tile crops each (ISIC_<7 digits>, 40-48 px
    JPEGs in train-image.hdf5; the real ones ~130 px), 7 of the 28 malignant; 3 test images in
    test-image.hdf5, as the real sample_submission's 3 rows."""
    rng = np.random.default_rng(seed)
    sites = ["posterior torso", "lower extremity", "anterior torso", "head/neck", "upper extremity"]
    rows, images = [], {}
    for k, pid, sex, age, name, mal in _isic_patients(rng):
        images[name] = jpeg_bytes(_lesion(rng, 40 + 8 * (k % 2), 40, 6 if mal else 1))
        rows.append((name, pid, age, sex, sites[k % 5], f"{2.5 + k % 7 * 0.8:.2f}", "TBP tile: close-up",
                     ("3D: white", "3D: XP")[k % 2], f"{20 + rng.normal(0, 3):.3f}", f"{3 + k % 5:.3f}",
                     "Torso Back", "Memorial Sloan Kettering Cancer Center", "CC-BY",
                     int(mal), f"IL_{k:07d}" if mal else "", "Malignant::Melanoma" if mal else "Benign"))
    write_store(root / "train-image.hdf5", images, opaque=(next(iter(images)),))
    cols = [*ISIC2024_COLUMNS, "target", "lesion_id", "iddx_full"]
    train = pd.DataFrame(rows, columns=cols)
    _write_csv(train[["isic_id", "target", *ISIC2024_COLUMNS[1:], "lesion_id", "iddx_full"]],
               root / "train-metadata.csv")
    test = [(f"ISIC_{int(rng.integers(10**6, 10**7)):07d}", f"IP_{int(rng.integers(10**6, 10**7)):07d}")
            for _ in range(3)]
    write_store(root / "test-image.hdf5", {n: jpeg_bytes(_lesion(rng, 44, 40, 6 * (j % 2))) for j, (n, _) in
                                             enumerate(test)})
    meta = [(n, p, "50.0", "female", "anterior torso", "3.10", "TBP tile: close-up", "3D: XP", "21.0", "4.0",
             "Torso Front", "Frazer Institute", "CC-BY") for n, p in test]
    _write_csv(pd.DataFrame(meta, columns=ISIC2024_COLUMNS), root / "test-metadata.csv")
    _write_csv(pd.DataFrame({"isic_id": [n for n, _ in test], "target": 0.3}), root / "sample_submission.csv")
    return root


RANZCR_LABELS = ["ETT - Abnormal", "ETT - Borderline", "ETT - Normal", "NGT - Abnormal", "NGT - Borderline",
                 "NGT - Incompletely Imaged", "NGT - Normal", "CVC - Abnormal", "CVC - Borderline", "CVC - Normal",
                 "Swan Ganz Catheter Present"]


SIIM_COVID_CLASSES = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance",
                      "Atypical Appearance"]


def siim_covid19(root: Path, seed: int = 0) -> Path:
    """SIIM-FISABIO-RSNA COVID-19 Detection's layout: train/<StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm
    (8 studies, one to three images each, a study's series apart), train_study_level.csv (id
    "<study>_study", four one-hot columns), train_image_level.csv (id "<image>_image", boxes, label
    "opacity 1 x0 y0 x1 y1 ..." or "none 1 0 0 1 1", StudyInstanceUID), test/ likewise (4 studies) and
    sample_submission.csv with a "<study>_study" row per test study and an "<image>_image" row per test image
    (PredictionString "negative 1 0 0 1 1 typical 1 0 0 1 1 ..." and "none 1 0 0 1 1", as Kaggle ships it)."""
    rng = np.random.default_rng(seed)

    def image_id() -> str:
        return rng.bytes(6).hex()

    def study(split: str, cls: int, n_images: int) -> tuple[str, list[str]]:
        uid, images, series = _uid(rng), [], ""
        for k in range(n_images):
            series = _uid(rng) if k % 2 == 0 else series  # images 0 and 1 share a series, 2 has its own
            i = image_id()
            write_cr(root / split / uid / series / f"{i}.dcm", _xray(rng, cls > 0, 48), uid, mono1=k % 2 == 1,
                     window=k == 0, rle=False)
            images.append(i)
        return uid, images

    study_rows, image_rows = [], []
    for s in range(8):
        cls = s % 4
        uid, images = study("train", cls, 1 + s % 3)
        study_rows.append((f"{uid}_study", *(int(k == cls) for k in range(4))))
        for i in images:
            if cls:
                x, y = (float(v) for v in rng.integers(100, 900, 2))
                boxes = str([{"x": x, "y": y, "width": 300.0, "height": 500.0}])
                label = f"opacity 1 {x} {y} {x + 300} {y + 500}"
            else:
                boxes, label = "", "none 1 0 0 1 1"
            image_rows.append((f"{i}_image", boxes, label, uid))
    _write_csv(pd.DataFrame(study_rows, columns=["id", *SIIM_COVID_CLASSES]), root / "train_study_level.csv")
    _write_csv(pd.DataFrame(image_rows, columns=["id", "boxes", "label", "StudyInstanceUID"]),
               root / "train_image_level.csv")
    sample = []
    for s in range(4):
        uid, images = study("test", s % 4, 1 + s % 2)
        sample.append((f"{uid}_study", "negative 1 0 0 1 1 typical 1 0 0 1 1 indeterminate 1 0 0 1 1 "
                                       "atypical 1 0 0 1 1"))
        sample += [(f"{i}_image", "none 1 0 0 1 1") for i in images]
    rng.shuffle(sample)  # Kaggle's sample interleaves study and image rows
    _write_csv(pd.DataFrame(sample, columns=["id", "PredictionString"]), root / "sample_submission.csv")
    return root


def _uid(rng: np.random.Generator) -> str:
    """A DICOM StudyInstanceUID as RANZCR's: the 1.2.826.0.1.3680043.8.498 root and a long number."""
    return "1.2.826.0.1.3680043.8.498." + "".join(str(d) for d in rng.integers(0, 10, 38)).lstrip("0")


def ranzcr_clip(root: Path, seed: int = 0) -> Path:
    """RANZCR CLiP: 10 patients (9 hex digits) with 2-3 studies each, 11 labels per study (one ETT, NGT and
    CVC state or none, a rare Swan-Ganz), drawn as lines on a grey chest; grayscale JPEGs taller than
    wide in train/ and test/, train_annotations.csv for some positives, a sample with the 11 columns."""
    rng = np.random.default_rng(seed)
    rows, notes, k = [], [], 0
    for p in range(10):
        patient = rng.bytes(5).hex()[:9]
        for _ in range(2 + p % 2):
            uid, y = _uid(rng), [0] * 11
            y[k % 3 if k % 4 else 2] = 1 if k % 5 else 0  # ETT: abnormal / borderline / normal, or none
            y[3 + k % 4] = 1  # NGT
            y[7 + (k // 2) % 3] = 1  # CVC
            y[10] = int(k % 6 == 0)  # Swan Ganz
            img = _xray(rng, False, 48)
            for j in np.flatnonzero(y):
                cv2.line(img, (4 + 4 * int(j), 2), (6 + 3 * int(j), 40), 250, 1)
            path = root / "train" / f"{uid}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), cv2.resize(img, (40, 48)))  # one channel, as the real JPEGs
            rows.append((uid, *y, patient))
            if y[2] and len(notes) < 4:
                notes.append((uid, "ETT - Normal", "[[12, 3], [13, 20], [14, 30]]"))
            k += 1
    _write_csv(pd.DataFrame(rows, columns=["StudyInstanceUID", *RANZCR_LABELS, "PatientID"]), root / "train.csv")
    _write_csv(pd.DataFrame(notes, columns=["StudyInstanceUID", "label", "data"]), root / "train_annotations.csv")
    test = [_uid(rng) for _ in range(6)]
    for k, uid in enumerate(test):
        path = root / "test" / f"{uid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), cv2.resize(_xray(rng, k % 2 == 1, 48), (40, 48)))
    _write_csv(pd.DataFrame({"StudyInstanceUID": test, **{c: 0 for c in RANZCR_LABELS}}),
               root / "sample_submission.csv")
    return root


def _hand(rng: np.random.Generator, months: float, w: int, h: int) -> np.ndarray:
    """A grey hand radiograph: a palm and five fingers whose length and brightness grow with the age."""
    img = np.full((h, w), 20, np.uint8)
    grow = months / 228
    cv2.ellipse(img, (w // 2, 2 * h // 3), (w // 4, h // 6), 0, 0, 360, 120 + int(80 * grow), -1)
    for f in range(5):
        x = w // 4 + f * w // 10
        cv2.line(img, (x, 2 * h // 3), (x, 2 * h // 3 - int(h * (0.2 + 0.3 * grow))), 150 + int(90 * grow), 2)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def rsna_bone_age(root: Path, seed: int = 0, nested: bool = True) -> Path:
    """kmader/rsna-bone-age: 24 training hands (id, boneage in months, male True/False) and 6 test hands
    (4360, 4361, ...) listed by "Case ID" and Sex (M/F), grey PNGs of several sizes in
    boneage-training-dataset/boneage-training-dataset/ and boneage-test-dataset/boneage-test-dataset/ (the
    Kaggle archive nests each folder in one of the same name; `nested=False`: flat, as a re-zipped copy);
    no sample submission."""
    rng = np.random.default_rng(seed)

    def folder(name: str) -> Path:
        return root / name / name if nested else root / name

    rows = []
    for k in range(24):
        i, months = 1377 + 17 * k, int(rng.integers(6, 228))
        path = folder("boneage-training-dataset") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), _hand(rng, months, 36 + 4 * (k % 3), 48))
        rows.append((i, months, "True" if k % 2 else "False"))
    _write_csv(pd.DataFrame(rows, columns=["id", "boneage", "male"]), root / "boneage-training-dataset.csv")
    test = [(4360 + k, "M" if k % 2 else "F") for k in range(6)]
    for i, _ in test:
        path = folder("boneage-test-dataset") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), _hand(rng, float(rng.integers(6, 228)), 40, 48))
    _write_csv(pd.DataFrame(test, columns=["Case ID", "Sex"]), root / "boneage-test-dataset.csv")
    return root


HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def ham10000(root: Path, seed: int = 0, isic_test: bool = False) -> Path:
    """kmader/skin-cancer-mnist-ham10000: 40 images of 30 lesions (HAM_<7 digits>; some photographed
    twice), nv the largest class, split over HAM10000_images_part_1/ and _part_2/, with the archive's
    lower-case copies of both folders and an hmnist_8_8_L.csv pixel table. `isic_test`: also the ISIC 2018
    Task 3 test folder (ISIC2018_Task3_Test_Input/: 5 images and a LICENSE.txt), which Kaggle does not hold."""
    rng = np.random.default_rng(seed)
    counts = {"akiec": 4, "bcc": 4, "bkl": 5, "df": 4, "mel": 5, "nv": 14, "vasc": 4}
    sites = ["back", "lower extremity", "trunk", "face", "scalp", "abdomen"]
    rows, pixels, k = [], [], 0
    for dx, n in counts.items():
        lesion = ""
        for j in range(n):
            if j % 3 != 1:  # every third image is a second photo of the lesion before it
                lesion = f"HAM_{int(rng.integers(0, 10**7)):07d}"
            image_id = f"ISIC_{24306 + 7 * k:07d}"
            img = _lesion(rng, 40, 30, HAM_CLASSES.index(dx))
            part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2"
            _write_rgb(root / part / f"{image_id}.jpg", img)
            (root / part.lower()).mkdir(exist_ok=True)
            (root / part.lower() / f"{image_id}.jpg").write_bytes((root / part / f"{image_id}.jpg").read_bytes())
            age = "" if k % 9 == 0 else f"{float(rng.integers(1, 18) * 5)}"
            rows.append((lesion, image_id, dx, ("histo", "follow_up", "consensus")[k % 3], age,
                         ("male", "female", "unknown")[k % 3], sites[k % 6]))
            pixels.append([*cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (8, 8)).ravel(), HAM_CLASSES.index(dx)])
            k += 1
    cols = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    _write_csv(pd.DataFrame(rows, columns=cols), root / "HAM10000_metadata.csv")
    _write_csv(pd.DataFrame(pixels, columns=[*(f"pixel{i:04d}" for i in range(64)), "label"]),
               root / "hmnist_8_8_L.csv")
    if isic_test:
        for t in range(5):
            _write_rgb(root / "ISIC2018_Task3_Test_Input" / f"ISIC_{34524 + t:07d}.jpg", _lesion(rng, 40, 30, t))
        (root / "ISIC2018_Task3_Test_Input" / "LICENSE.txt").write_text("CC-BY-NC\n")
    return root


HMS_VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
HMS_CONSENSUS = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"]
HMS_FREQS = [f"{f:.2f}" for f in np.linspace(0.59, 19.92, 100)]  # the real column names' spacing (~0.195 Hz)


def hms_spectrogram(path: Path, rng: np.random.Generator, seconds: int, cls: int, nan: bool = False) -> None:
    """A spectrogram parquet as HMS's: `time` (1, 3, 5, ... s) and LL_/RL_/LP_/RP_<Hz> float32 power, 1/f
    noise with a band per class (seizure: rhythmic low-frequency power); with `nan`, one chain's first
    minute and one column NaN, as real files have."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    time = np.arange(1, seconds, 2, dtype=np.float64)
    f = np.linspace(0.59, 19.92, 100)
    cols: dict[str, np.ndarray] = {"time": time}
    for chain in ("LL", "RL", "LP", "RP"):
        power = rng.gamma(2.0, 1.0, (len(time), 100)) * (20 / f)  # (T, F)
        power[:, 8 * cls:8 * cls + 6] *= 40
        if nan and chain == "RL":
            power[:30] = np.nan
        for k, hz in enumerate(HMS_FREQS):
            cols[f"{chain}_{hz}"] = power[:, k].astype(np.float32)
    if nan:
        cols["LP_" + HMS_FREQS[50]][:] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


HMS_ELECTRODES = ["Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz", "Fp2", "F4", "C4", "P4", "F8",
                  "T4", "T6", "O2", "EKG"]  # the real train_eegs/ columns, in their order


def hms_eeg(path: Path, rng: np.random.Generator, seconds: float, cls: int) -> None:
    """An EEG parquet as HMS's: the 20 columns at 200 Hz (float32 µV), noise with a focal (2 + cls) Hz rhythm
    on T3 and C3 (so the left chains' pairs through them carry it), a NaN stretch on Cz."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = np.arange(int(seconds * 200)) / 200
    cols = {}
    for e in HMS_ELECTRODES:
        v = rng.normal(0, 15, len(t))
        if e in ("T3", "C3"):
            v += 60 * np.sin(2 * np.pi * (2 + cls) * t)
        cols[e] = v.astype(np.float32)
    cols["Cz"][:400] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def hms2024(root: Path, seed: int = 0, eegs: bool = False, figures: bool = False) -> Path:
    """HMS 2024: 8 patients, 12 recordings (eeg_id, each with its own spectrogram), 1-4 labelled windows each
    at increasing offsets (the votes differ across a recording's windows), recordings 700-900 s; 4 test
    recordings of 600 s. Two training files have NaN stretches. With `eegs`, train_eegs/<eeg_id>.parquet
    (covering the rows' 50 s windows) and test_eegs/ (50 s) too; with `figures`, the download's
    example_figures/ (a few PNG plots, named by no CSV)."""
    rng = np.random.default_rng(seed)
    rows, label_id = [], 1000
    for k in range(12):
        eeg, spec, patient = 500000 + 37 * k, 900000 + 53 * k, 20000 + k % 8
        cls, seconds = k % 6, 700 + 100 * (k % 3)
        hms_spectrogram(root / "train_spectrograms" / f"{spec}.parquet", rng, seconds, cls, nan=k in (1, 4))
        for sub in range(1 + k % 4):
            offset = min(24 * sub, seconds - 600)
            votes = [0] * 6
            votes[cls] = 3 + sub
            votes[(cls + 1 + sub) % 6] = sub % 3
            rows.append((eeg, sub, offset + 10 * sub, spec, sub, offset, label_id, patient,
                         HMS_CONSENSUS[int(np.argmax(votes))], *votes))
            label_id += 7
        if eegs:
            hms_eeg(root / "train_eegs" / f"{eeg}.parquet", rng, rows[-1][2] + 52, cls)
    cols = ["eeg_id", "eeg_sub_id", "eeg_label_offset_seconds", "spectrogram_id", "spectrogram_sub_id",
            "spectrogram_label_offset_seconds", "label_id", "patient_id", "expert_consensus", *HMS_VOTES]
    _write_csv(pd.DataFrame(rows, columns=cols), root / "train.csv")
    test = [(700000 + 11 * k, 800000 + 13 * k, 30000 + k) for k in range(4)]
    for k, (spec, _, _) in enumerate(test):
        hms_spectrogram(root / "test_spectrograms" / f"{spec}.parquet", rng, 600, k % 6)
        if eegs:
            hms_eeg(root / "test_eegs" / f"{test[k][1]}.parquet", rng, 50, k % 6)
    _write_csv(pd.DataFrame(test, columns=["spectrogram_id", "eeg_id", "patient_id"]), root / "test.csv")
    _write_csv(pd.DataFrame({"eeg_id": [e for _, e, _ in test], **{v: 1 / 6 for v in HMS_VOTES}}),
               root / "sample_submission.csv")
    if figures:
        for n in range(1, 4):
            _write_rgb(root / "example_figures" / f"Sample{n}.png", rng.integers(0, 255, (40, 60, 3), np.uint8))
    return root


def osic(root: Path, seed: int = 0) -> Path:
    """OSIC Pulmonary Fibrosis Progression: 6 patients (ID<21 digits>), 4-6 visits each (Weeks, FVC in ml,
    Percent, Age, Sex, SmokingStatus: several rows per Patient), each with train/<Patient>/<n>.dcm CT slices
    (3, grey); test.csv (one row per patient: its baseline visit) with test/<Patient>/ slices;
    sample_submission.csv (Patient_Week, FVC, Confidence)."""
    rng = np.random.default_rng(seed)
    rows, patients = [], [f"ID{int(rng.integers(10**11, 10**12))}{int(rng.integers(10**8, 10**9))}" for _ in range(8)]
    for k, pid in enumerate(patients):
        age, sex, smoke = 60 + k, ("Male", "Female")[k % 2], ("Ex-smoker", "Never smoked", "Currently smokes")[k % 3]
        base = 2000 + 150 * k
        for v in range(4 + k % 3):
            weeks = -4 + 9 * v + k
            fvc = int(base - 12 * weeks + rng.integers(-60, 60))
            rows.append((pid, weeks, fvc, round(100 * fvc / (base + 700), 6), age, sex, smoke))
        for n in range(1, 4):
            write_cr(root / ("test" if k >= 6 else "train") / pid / f"{n}.dcm",
                     _xray(rng, k % 2 == 1, 32), pid, mono1=False, window=False, rle=False)
    cols = ["Patient", "Weeks", "FVC", "Percent", "Age", "Sex", "SmokingStatus"]
    df = pd.DataFrame(rows, columns=cols)
    _write_csv(df[df["Patient"].isin(patients[:6])], root / "train.csv")
    test = df[df["Patient"].isin(patients[6:])].groupby("Patient", sort=False).head(1)
    _write_csv(test, root / "test.csv")
    _write_csv(pd.DataFrame([(f"{p}_{w}", 2000, 100) for p in patients[6:] for w in range(-12, 134)],
                            columns=["Patient_Week", "FVC", "Confidence"]), root / "sample_submission.csv")
    return root


BUILDERS = {"aptos2019": aptos2019, "dr2015": dr2015, "chest_xray": chest_xray, "cnmc2019": cnmc2019}
# rsna_pneumonia is not in BUILDERS: its submission holds probabilities, not labels (tests/data/test_dicom.py runs it)
# tasks beyond one label per image (tests/data/test_task_configs.py)
TASK_BUILDERS = {"isic2020": isic2020, "isic2024": isic2024, "ranzcr_clip": ranzcr_clip, "rsna_bone_age": rsna_bone_age,
                 "ham10000": ham10000, "hms2024": hms2024}


def build(name: str, root: Path) -> Path:
    """The replica of competition `name` (a config name in configs/) under `root`."""
    return {**BUILDERS, **TASK_BUILDERS}[name](root)


def overrides(root: Path, out: Path, fast: list[str]) -> list[str]:
    """The shipped config made tiny: the conftest FAST sizes, 4 images a batch, no pretrained download."""
    return [*fast, "batch_size=4", "model.pretrained=null", f"data.root={root}", f"out_dir={out}"]
