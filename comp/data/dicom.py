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
- default (no windows configured, or `file`): the first usable of the file's VOI sources, in pydicom's
  apply_voi_lut order: its VOI LUT Sequence (pydicom's `apply_voi`, its output spread from its smallest to
  its largest entry), else each Window Center/Width pair in turn (a multi-valued window lists
  alternatives; VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID: pydicom's `apply_windowing`), else the
  full range of the image's values (min to max, as viewers and the Kaggle notebooks do). A source that
  is present but unusable (a width of 0 or below: fo-dicom#161, real files carry it; a value that is not
  a number; a broken LUT) is skipped with a warning naming the file, where pydicom raises (pydicom#1073);
  a LINEAR width in (0, 1), legitimate after a tiny Rescale Slope (fo-dicom#1999), is applied as
  LINEAR_EXACT (fo-dicom PR #1951);
- a window [center, width] or a name in WINDOWS: the LINEAR function of PS3.3 C.11.2.1.2.1 (LINEAR_EXACT
  below width 1).
Since each of these maps a value to a value, they are computed once per distinct stored value (at most
2^16 for the usual 8-16 bit data) and the image goes through the resulting 8-bit lookup table: the very
pixels of applying them to the whole array, at the cost of one gather.

Headers that viewers read past (no preamble or Transfer Syntax UID, pixel-module elements missing or at
odds with the data, a Rescale Slope of 0, an enhanced image's functional groups) are repaired first
(comp.data.dicom_header); every repair is one warning line naming the file and the element, and a fault
that cannot be repaired, or any failure turning the values into grey levels, is an ImageError naming the
file.

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

from comp.data.dicom_header import first_line, frame_header, number, repair_header, said, shown, values_of
from comp.data.image_base import ImageError, repaired, stretch
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
# and by content: "DICM" after the 128-byte preamble (PS3.10 7.1); or, written without preamble (pydicom and
# viewers read it), its first tag: (0002,0000)/(0002,0001) of the File Meta, or a bare data set's usual first
# element of group 0008 (length, Character Set, Image Type, Creation Date, SOP Class). No image starts so.
MAGIC = ((128, b"DICM"), (0, b"\x02\x00\x00\x00"), (0, b"\x02\x00\x01\x00"), (0, b"\x08\x00\x00\x00"),
         (0, b"\x08\x00\x05\x00"), (0, b"\x08\x00\x08\x00"), (0, b"\x08\x00\x12\x00"), (0, b"\x08\x00\x16\x00"))
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
        UserError: an unknown name, a pair that is not two numbers with width > 0, a count other than
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
        if not (np.isfinite(c) and np.isfinite(wd) and wd > 0):  # < 1: in the units of a tiny Rescale Slope
            raise UserError(f"bad value for config key '{key}': {[c, wd]!r} needs a finite center and width > 0")
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


def apply_window(values: np.ndarray, center: float, width: float, func: str = "LINEAR") -> np.ndarray:
    """A window to 0..255 uint8 by pydicom's `apply_windowing` (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT,
    SIGMOID), its output range set to 0..255 by a header of 8 unsigned bits and no rescale (the values are
    already the Modality LUT's output). LINEAR needs width >= 1, which holds in stored units; after a tiny
    Rescale Slope a window narrower than 1 is legitimate (fo-dicom#1999, RT images with slope 1e-6), and
    pydicom refuses it (pydicom#1073): it is applied as LINEAR_EXACT, which takes any width > 0, as
    fo-dicom (PR #1951) and dicom-rs do."""
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_windowing

    if func == "LINEAR" and width < 1:
        func = "LINEAR_EXACT"
    hdr = Dataset()
    hdr.PhotometricInterpretation, hdr.BitsStored, hdr.PixelRepresentation = "MONOCHROME2", 8, 0
    hdr.WindowCenter, hdr.WindowWidth, hdr.VOILUTFunction = center, width, func
    with np.errstate(over="ignore"):  # SIGMOID's exp overflows to 0 or 255 far from the center: intended
        y = apply_windowing(np.asarray(values, np.float64), hdr, 0)
    return np.rint(np.clip(y, 0, 255)).astype(np.uint8)


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray:
    """The file's VOI LUT Sequence (pydicom's `apply_voi`), its output spread from its smallest to its
    largest entry, as uint8."""
    from pydicom.pixels.processing import apply_voi

    out = apply_voi(np.rint(values).astype(np.int64), ds, 0).astype(np.float64)
    entries = np.asarray(apply_voi(np.arange(-(1 << 16), 1 << 17), ds, 0), np.float64)  # every LUT entry
    if not entries.max() > entries.min():
        raise ValueError("its entries are all one value")
    return stretch(out, entries.min(), entries.max())


def _own_voi(values: np.ndarray, ds: Any, notes: list[str]) -> np.ndarray:
    """The file's own VOI as uint8, from the first usable of its sources (PS3.3 C.11.2, pydicom's
    apply_voi_lut order): the VOI LUT Sequence, then each Window Center/Width pair in turn (a multi-valued
    window lists alternatives), then the full range of the values (min to max, as viewers do without a
    window). A source that is present but unusable (a Width of 0 or below, a value that is not a number, a
    broken LUT) is skipped, and `notes` says which and what was used instead (fo-dicom#161: Width 0 exists
    in real files)."""
    skipped: list[str] = []
    if ds.get("VOILUTSequence"):
        try:
            return _voi_lut(values, ds)
        except Exception as e:  # a LUT with a bad descriptor, bit depth or data: the next source
            skipped.append(f"(0028,3010) VOI LUT Sequence unusable ({first_line(e)})")
    centers, widths = values_of(ds, "WindowCenter"), values_of(ds, "WindowWidth")
    if centers or widths:
        func = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        if func not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            notes.append(f"(0028,1056) VOI LUT Function {func!r} is not LINEAR, LINEAR_EXACT or SIGMOID: "
                         f"LINEAR used")
            func = "LINEAR"
        if len(centers) != len(widths):
            notes.append(f"(0028,1050) Window Center has {len(centers)} value(s) and (0028,1051) Window Width "
                         f"{len(widths)}: paired as far as both go")
        for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
            cx, wx = number(c), number(w)
            if cx is not None and wx is not None and wx > 0:
                pairs = (("(0028,1050) Window Center", c, cx), ("(0028,1051) Window Width", w, wx))
                # a value pydicom left unparsed (a decimal comma, NULs) that number() reads
                notes.extend(f"{name} {shown(v)} read as {x:g}" for name, v, x in pairs if isinstance(v, str))
                if skipped:
                    notes.extend([*skipped, f"window {i + 1} of {len(centers)} used"])
                return apply_window(values, cx, wx, func)
            skipped.append(f"window {i + 1} (0028,1050) Window Center {shown(c)}, (0028,1051) Window Width "
                           f"{shown(w)} unusable (needs two numbers, width > 0)")
    if skipped:
        notes.extend([*skipped, "the image's full range used"])
    return stretch(values, values.min(), values.max())


def _modality(stored: np.ndarray, ds: Any, notes: list[str]) -> np.ndarray:
    """Stored values through the Modality LUT (pydicom's `apply_modality_lut`): the Modality LUT Sequence,
    or Rescale Slope and Intercept. pydicom skips the rescale unless both are present; a lone one gets the
    other's identity value (slope 1, intercept 0), and a slope of 0 or not a number (every pixel one value)
    is taken as 1, each with a note."""
    from pydicom.pixels.processing import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(stored, ds))
    has_slope, has_icpt = "RescaleSlope" in ds, "RescaleIntercept" in ds
    if not (has_slope or has_icpt):
        return stored
    slope, icpt = number(ds.get("RescaleSlope")), number(ds.get("RescaleIntercept"))
    if not has_slope or slope is None or slope == 0:
        notes.append(f"(0028,1053) Rescale Slope {said(ds, 'RescaleSlope')}: 1 used")
        slope = 1.0
    if icpt is None:
        notes.append(f"(0028,1052) Rescale Intercept {said(ds, 'RescaleIntercept')}: 0 used")
        icpt = 0.0
    ds.RescaleSlope, ds.RescaleIntercept = slope, icpt
    return np.asarray(apply_modality_lut(stored, ds))


def _grey(arr: np.ndarray, ds: Any, opts: DicomOptions, notes: list[str]) -> np.ndarray:
    """Stored values (H, W) -> (H, W, 3) uint8 through Modality LUT, VOI per channel and polarity."""
    wins = opts.windows or (None,)
    integer = np.issubdtype(arr.dtype, np.integer)
    lo, hi = (int(arr.min()), int(arr.max())) if integer else (0, 0)
    use_lut = integer and hi - lo < MAX_LUT
    if not integer and not (ok := np.isfinite(arr)).all():  # nan/inf in Float Pixel Data: nan through any window
        notes.append(f"(7FE0,0008) Float Pixel Data: {int((~ok).sum())} values not finite, the lowest finite used")
        arr = np.where(ok, arr, arr[ok].min() if ok.any() else 0)
    stored = np.arange(lo, hi + 1, dtype=np.int64) if use_lut else arr
    values = np.asarray(_modality(stored, ds, notes), np.float64)
    if use_lut and lo != 0:  # table index of each pixel: its stored value - lo
        arr = np.subtract(arr, lo, dtype=np.int32 if arr.itemsize < 4 else np.int64, casting="unsafe")
    chans = []
    for w in wins:
        y = _own_voi(values, ds, notes) if w is None else apply_window(values, *w)
        if ds.PhotometricInterpretation == "MONOCHROME1":
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
    """Decode one DICOM file into (H, W, 3) uint8 RGB as described in the module docstring. Headers that a
    viewer reads past (see comp.data.dicom_header, `_modality`, `_own_voi`) are repaired, with one warning line
    naming the file and each repair (comp.data.image_base.repaired).

    Raises:
        ImageError: corrupt (not DICOM, no pixel data, undecodable, a header element that cannot be repaired,
            named; any failure turning its values into grey levels, naming the file), truncated (less pixel
            data than the header says), unsupported (no decoder for its transfer syntax; several frames and
            images.dicom_frame=error).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path, opts = Path(path), opts or DicomOptions()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ImageError("corrupt", path, f"not a readable DICOM file: {first_line(e)}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError("corrupt", path, "a DICOM file without pixel data")
    notes: list[str] = []
    try:
        n = repair_header(path, ds, notes)
    except ImageError:
        raise
    except Exception as e:  # a header value of a type no repair foresaw: the file's fault, named
        raise ImageError("corrupt", path, f"its header cannot be read: {type(e).__name__}: {first_line(e)}") from None
    plugin = _decoder_plugin(path, ds)
    if n > 1 and opts.frame == "error":
        raise ImageError("unsupported", path, f"{n} frames; set images.dicom_frame to first or middle")
    index = 0 if opts.frame == "first" or n == 1 else n // 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=index, decoding_plugin=plugin)
            arr = ds.pixel_array
    except Exception as e:  # pydicom and its plugins raise many types for a bad stream
        msg = first_line(e)
        kind = "truncated" if "less than expected" in msg or "truncat" in msg.lower() else "corrupt"
        raise ImageError(kind, path, msg) from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame_header(ds, index)
            if arr.ndim == 2 and ds.PhotometricInterpretation != "PALETTE COLOR":
                img = _grey(arr, ds, opts, notes)
            else:
                img = _colour(arr, ds)
    except Exception as e:  # pydicom's LUT and window functions raise ValueError, TypeError, KeyError...
        raise ImageError("corrupt", path, f"its values cannot be turned into grey levels: {type(e).__name__}: "
                                          f"{first_line(e)}") from None
    if notes:
        repaired(path, notes)
    return img
