"""DICOM files/s on one core: the kit's read (comp.data.dicom through load_preprocessed: decode, Modality
LUT, VOI LUT, polarity, resize) against the common Kaggle-notebook route (`pydicom.dcmread` +
`apply_voi_lut(ds.pixel_array, ds)` + MONOCHROME1 flip + min-max to uint8 + `cv2.resize`, as in the
VinBigData and RSNA kernels' `read_xray`), on two generated files:

- a 2048x2048 CR chest, 12 bits stored in 16, MONOCHROME1 with a window, uncompressed (RSNA Pneumonia,
  SIIM-ACR, VinBigData);
- a 4096x3328 mammogram, 12-bit MONOCHROME2, JPEG 2000 lossless (RSNA Screening Mammography 2023 ships
  Hologic images of this size in this syntax), encoded with pylibjpeg-openjpeg through pydicom's compress.

Both routes run interleaved round after round (benchmarks.common.interleaved); the ratio is the median of
the per-round ratios. The files are written to a temporary folder and deleted afterwards.

    python benchmarks/dicom.py [--rounds 5] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import interleaved, machine, median_ratio  # noqa: E402
from comp.data.preprocess import load_preprocessed  # noqa: E402


def body(h: int, w: int, rng: np.random.Generator, mammo: bool) -> np.ndarray:
    """(h, w) uint16 12-bit radiograph-like values: smooth anatomy at 1/8 scale upsampled, texture, noise
    (the entropy of the file sets the JPEG 2000 decode time, so it is not a flat image)."""
    hs, ws = h // 8, w // 8
    yy, xx = np.mgrid[:hs, :ws].astype(np.float32)
    if mammo:  # a breast against the chest wall on the left, dark background
        img = np.where(((xx / (0.7 * ws)) ** 2 + ((yy - hs / 2) / (0.48 * hs)) ** 2) < 1, 2600.0, 150.0)
    else:  # a chest: lighter body, two darker lungs
        img = np.full((hs, ws), 2400.0, np.float32)
        for cx in (ws / 3, 2 * ws / 3):
            img -= 1200 * (((xx - cx) / (0.14 * ws)) ** 2 + ((yy - hs / 2) / (0.32 * hs)) ** 2 < 1)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 6) + rng.normal(0, 60, (hs, ws)).astype(np.float32)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img + rng.normal(0, 12, (h, w)), 0, 4095).astype(np.uint16)


def write(path: Path, stored: np.ndarray, mono1: bool, window: bool, j2k: bool) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2" if j2k else "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG" if j2k else "CR"
    ds.set_pixel_data(4095 - stored if mono1 else stored, "MONOCHROME1" if mono1 else "MONOCHROME2", 12)
    if window:
        ds.WindowCenter, ds.WindowWidth = 1800, 3000
    if j2k:
        ds.compress(JPEG2000Lossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def kaggle_route(path: Path, size: int) -> np.ndarray:
    """The notebooks' read_xray: VOI LUT (pydicom's default decoder order), MONOCHROME1 flip, min-max."""
    import pydicom
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(path)
    data = apply_voi_lut(ds.pixel_array, ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    return cv2.resize((data * 255).astype(np.uint8), (size, size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    m = machine()
    print(f"comp DICOM benchmark {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python benchmarks/dicom.py "
          f"--rounds {args.rounds} --size {args.size}")
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), one core used")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = {"CR 2048x2048, 12/16-bit MONOCHROME1, uncompressed":
                 write(Path(tmp) / "cr.dcm", body(2048, 2048, rng, False), True, True, False),
                 "mammogram 4096x3328, 12-bit, JPEG 2000 lossless":
                 write(Path(tmp) / "mg.dcm", body(4096, 3328, rng, True), False, False, True)}
        print(f"files written in {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in files.values()))
        for name, p in files.items():
            secs = interleaved({"kit": lambda p=p: load_preprocessed(p, args.size),
                                "kaggle": lambda p=p: kaggle_route(p, args.size)}, args.rounds)
            kit, kag = (float(np.median(secs[k])) for k in ("kit", "kaggle"))
            rows.append((name, 1 / kit, 1 / kag, median_ratio(secs["kit"], secs["kaggle"])))
    print(f"\nfiles/s on one core, {args.size} px out, median of {args.rounds} interleaved rounds")
    print(f"{'':54s}{'kit':>10s}{'kaggle':>10s}{'kit/kaggle':>12s}")
    for name, a, b, r in rows:
        print(f"{name:54s}{a:10.2f}{b:10.2f}{r:11.2f}x")


if __name__ == "__main__":
    main()
