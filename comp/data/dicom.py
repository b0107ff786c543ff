"""DICOM files as a radiologist's viewer shows them, as (H, W, 3) uint8 RGB like every other image.

Decoding is pydicom's (3.x) with the pylibjpeg plugins: pylibjpeg-libjpeg (JPEG baseline, extended,
lossless, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000, HTJ2K) and pylibjpeg-rle (RLE); pydicom itself reads
the uncompressed and deflated syntaxes (little/big endian, implicit/explicit VR). Chosen over python-gdcm
because JPEG 2000, the costly syntax (RSNA Mammography 2023, 4k mammograms), decodes faster (RG1_J2KR,
1955x1841 15-bit: 0.89 s against 1.31 s with gdcm, 1.12 s with Pillow, one core; see BENCHMARKS.md) and
it covers every syntax pydicom's test files hold (gdcm fails on JPGExtended.dcm). gdcm is 2-3x faster on
JPEG lossless, which the competitions here do not ship. pylibjpeg is asked for first where it can decode
the syntax (pydicom would try Pillow first). A syntax no installed plugin decodes is an
`ImageError('unsupported')` naming the file, the syntax and the package that would decode it.

Grey levels (PS3.3 C.11 and PS3.4 N.2): the stored values go through the Modality LUT (Rescale Slope and
Intercept, or a Modality LUT Sequence: pydicom's `apply_modality_lut`), then the VOI stage, then to
0..255, then MONOCHROME1 is inverted so that every image has its bone bright and air dark. The VOI stage
is, per channel of `images.dicom_windows`:
- default (no windows configured, or `file`): the file's VOI LUT Sequence (pydicom's `apply_voi`, its
  output spread from its smallest to its largest entry), else its first window (Window Center/Width
  with the VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID: pydicom's `apply_windowing`, its output
  range as pydicom gives it), else the full range of the image's values (min to max, as viewers and
  the Kaggle notebooks do);
- a window [center, width] or a name in WINDOWS: the LINEAR function of PS3.3 C.11.2.1.2.1.
Since each of these maps a value to a value, they are computed once per distinct stored value (at most
2^16 for the usual 8-16 bit data) and the image goes through the resulting 8-bit lookup table: the very
pixels of applying them to the whole array, at the cost of one gather.

Colour (RGB, YBR_* converted to RGB by the decoder or pydicom, PALETTE COLOR through pydicom's
`apply_color_lut`) is scaled from its bit depth to 0..255; windows do not apply to it.

Multi-frame files: `images.dicom_frame` first | middle | error (default: an `ImageError('unsupported')`
naming the file and its frame count). Only the chosen frame is decoded.

One reader of the table in comp.data.readers: it takes the files SUFFIXES and MAGIC name (an
extension-less DICOM by its DICM prefix too) and imports only comp.data.image_base of the other readers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comp.data.image_base import ImageError, stretch
from comp.errors import UserError

# CT windows as (center, width) in Hounsfield units. Radiopaedia, "Windowing (CT)"
# (https://radiopaedia.org/articles/windowing-ct): brain W80 L40, stroke W40 L40, bone W2800 L600,
# lungs W1500 L-600, mediastinum W350 L50, liver W150 L30, abdomen soft tissue W400 L50. The RSNA
# Intracranial Hemorrhage 2019 solutions' channels: brain 40/80, subdural 80/200, soft tissue 40/380
# (e.g. the 1st place write-up by SeuTao; Ryan Epp's "gradient & sigmoid windowing" kernel).
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40, 80), "subdural": (80, 200), "stroke": (40, 40), "bone": (600, 2800), "soft_tissue": (40, 380),
    "lung": (-600, 1500), "mediastinum": (50, 350), "liver": (30, 150), "abdomen": (50, 400)}
FILE = "file"  # the file's own VOI LUT or first window, else the full range (the default)
FRAMES = ("first", "middle", "error")
SUFFIXES = (".dcm", ".dicom")  # the files comp.data.readers sends here by name,
MAGIC = ((128, b"DICM"),)  # and by content: "DICM" after the 128-byte preamble (PS3.10 7.1), whatever the name
MAX_LUT = 1 << 20  # distinct stored values beyond which the VOI stage runs on the whole array instead

# Transfer syntax UID prefix -> the package that decodes it (for the message when none is installed)
DECODER_PACKAGE = {"1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg", "1.2.840.10008.1.2.4.7": "pylibjpeg-libjpeg",
                   "1.2.840.10008.1.2.4.8": "pylibjpeg-libjpeg", "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg",
                   "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg", "1.2.840.10008.1.2.5": "pylibjpeg-rle"}


@dataclass(frozen=True)
class DicomOptions:
    """What `images.dicom_windows` and `images.dicom_frame` ask: each window (center, width) or None for
    the file's own; 0, 1 or 3 of them (1 is repeated to three channels)."""

    windows: tuple[tuple[float, float] | None, ...] = ()
    frame: str = "error"


def options(windows: Any = (), frame: str = "error") -> DicomOptions:
    """Parse `images.dicom_windows` (names of WINDOWS, `file`, or [center, width] pairs) and
    `images.dicom_frame`.

    Raises:
        UserError: an unknown name, a pair that is not two numbers with width >= 1, a count other than
            0, 1 or 3, or an unknown frame policy, naming the key.
    """
    out: list[tuple[float, float] | None] = []
    for i, w in enumerate(list(windows or [])):
        key = f"images.dicom_windows[{i}]"
        if isinstance(w, str):
            if w != FILE and w not in WINDOWS:
                raise UserError(f"bad value for config key '{key}': unknown window {w!r}; "
                                f"choose from {[*WINDOWS, FILE]} or give [center, width]")
            out.append(None if w == FILE else tuple(float(v) for v in WINDOWS[w]))
            continue
        try:
            c, wd = (float(v) for v in w)
        except (TypeError, ValueError):
            raise UserError(f"bad value for config key '{key}': {w!r} is neither a window name nor "
                            f"[center, width]") from None
        if not (np.isfinite(c) and np.isfinite(wd) and wd >= 1):
            raise UserError(f"bad value for config key '{key}': {[c, wd]!r} needs a finite center and width >= 1")
        out.append((c, wd))
    if len(out) not in (0, 1, 3):
        raise UserError(f"bad value for config key 'images.dicom_windows': {len(out)} windows; give 1 (grey) "
                        f"or 3 (one per channel), or none for the file's own")
    if frame not in FRAMES:
        raise UserError(f"bad value for config key 'images.dicom_frame': {frame!r} must be one of {list(FRAMES)}")
    return DicomOptions(tuple(out), frame)


def from_config(cfg: Any) -> DicomOptions:
    """The DICOM options of a config (images.dicom_windows, images.dicom_frame)."""
    from omegaconf import OmegaConf

    wins = OmegaConf.to_container(cfg.images.dicom_windows, resolve=True) if OmegaConf.is_config(
        cfg.images.dicom_windows) else cfg.images.dicom_windows
    return options(wins, str(cfg.images.dicom_frame))


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window to 0..1: 0 at or below c - 0.5 - (w-1)/2, 1 above c - 0.5 + (w-1)/2,
    linear between (the formula pydicom's apply_windowing uses, with its output range scaled to 0..1)."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) if width > 1 else (
        (values > center - 0.5).astype(np.float64))


def _own_voi(values: np.ndarray, ds: Any) -> np.ndarray:
    """The file's VOI LUT, else its first window, else its full range, as uint8 (module docstring)."""
    from pydicom.pixels.processing import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        out = apply_voi(np.rint(values).astype(np.int64), ds, 0).astype(np.float64)
        entries = np.asarray(apply_voi(np.arange(-(1 << 16), 1 << 17), ds, 0), np.float64)  # every LUT entry
        return stretch(out, entries.min(), entries.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = apply_windowing(values.astype(np.float64), ds, 0)
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds, 0)  # the output range: its two limits
        return stretch(y, lo, hi)
    return stretch(values, values.min(), values.max())


def _grey(arr: np.ndarray, ds: Any, opts: DicomOptions) -> np.ndarray:
    """Stored values (H, W) -> (H, W, 3) uint8 through Modality LUT, VOI per channel and polarity."""
    from pydicom.pixels.processing import apply_modality_lut

    wins = opts.windows or (None,)
    integer = np.issubdtype(arr.dtype, np.integer)
    lo, hi = (int(arr.min()), int(arr.max())) if integer else (0, 0)
    use_lut = integer and hi - lo < MAX_LUT
    stored = np.arange(lo, hi + 1, dtype=np.int64) if use_lut else arr
    values = np.asarray(apply_modality_lut(stored, ds))
    if use_lut and lo != 0:  # table index of each pixel: its stored value - lo
        arr = np.subtract(arr, lo, dtype=np.int32 if arr.itemsize < 4 else np.int64, casting="unsafe")
    chans = []
    for w in wins:
        y = _own_voi(values, ds) if w is None else stretch(window(values.astype(np.float64), *w), 0.0, 1.0)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            y = 255 - y
        chans.append(np.take(y, arr) if use_lut else y)  # each pixel through the table: one gather
    if len(chans) == 1:
        return cv2.cvtColor(chans[0], cv2.COLOR_GRAY2RGB)  # ~4x faster than np.stack (4 Mpx)
    return cv2.merge(chans)


def _colour(arr: np.ndarray, ds: Any) -> np.ndarray:
    """RGB (decoded, YBR converted) or PALETTE COLOR -> (H, W, 3) uint8 from its bit depth."""
    from pydicom.pixels.processing import apply_color_lut

    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        top = float(np.iinfo(arr.dtype).max)
    else:
        top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
    if arr.dtype == np.uint8 and top == 255:
        return np.ascontiguousarray(arr[..., :3])
    return stretch(arr[..., :3].astype(np.float64), 0.0, top)


def _decoder_plugin(path: Path, ds: Any) -> str:
    """'pylibjpeg' where it decodes the file's syntax, else '' (pydicom's own order).

    Raises:
        ImageError: unsupported, when no installed plugin decodes the syntax, naming the package that would.
    """
    from pydicom.pixels import get_decoder

    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsuid is None or not tsuid.is_compressed:
        return ""
    try:
        dec = get_decoder(tsuid)
    except NotImplementedError:
        dec = None
    if dec is None or not dec.is_available:
        pkg = next((p for k, p in DECODER_PACKAGE.items() if tsuid.startswith(k)), "")
        hint = f"pip install {pkg}" if pkg else "no decoder for it in pydicom; convert the files (dcmtk, gdcm)"
        raise ImageError("unsupported", path, f"transfer syntax {tsuid.name} ({tsuid}) has no installed "
                                              f"decoder: {hint}")
    return "pylibjpeg" if "pylibjpeg" in dec.available_plugins else ""


def read_dicom(path: str | Path, opts: DicomOptions | None = None) -> np.ndarray:
    """Decode one DICOM file into (H, W, 3) uint8 RGB as described in the module docstring.

    Raises:
        ImageError: corrupt (not DICOM, no pixel data, undecodable), truncated (less pixel data than the
            header says), unsupported (no decoder for its transfer syntax; several frames and
            images.dicom_frame=error).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels.utils import get_nr_frames

    path, opts = Path(path), opts or DicomOptions()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ImageError("corrupt", path, f"not a readable DICOM file: {str(e).splitlines()[0]}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError("corrupt", path, "a DICOM file without pixel data")
    plugin = _decoder_plugin(path, ds)
    try:
        n = int(get_nr_frames(ds, warn=False))
    except (TypeError, ValueError):  # a Number of Frames that is not a number ('1A'): one frame
        n = 1
    if n > 1 and opts.frame == "error":
        raise ImageError("unsupported", path, f"{n} frames; set images.dicom_frame to first or middle")
    index = 0 if opts.frame == "first" or n == 1 else n // 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index, decoding_plugin=plugin)
            arr = ds.pixel_array
    except Exception as e:  # pydicom and its plugins raise many types for a bad stream
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = "truncated" if "less than expected" in msg or "truncat" in msg.lower() else "corrupt"
        raise ImageError(kind, path, msg) from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2 and ds.get("PhotometricInterpretation") != "PALETTE COLOR":
        return _grey(arr, ds, opts)
    return _colour(arr, ds)
