"""The reader of JPEG, PNG, TIFF, BMP and WebP files (and the fallback of comp.data.readers for a file no
reader claims): decoding into an RGB uint8 array at the training size.

JPEGs are decoded by libjpeg-turbo through simplejpeg (where it is absent, as in Kaggle's Python image,
through OpenCV's IMREAD_REDUCED_* at 1/8, 1/4, 1/2), at the smallest of its scales (1/8, 2/8, 3/8, ...)
that still covers the target, straight from the DCT coefficients: the very pixels of OpenCV's
IMREAD_REDUCED_* at the scales both have, ~25% faster (0.76 against 1.0 ms for a 512 px fundus JPEG at
1/2 scale, one core), and the IDCT and colour conversion of a 3000x2000 photograph shrink to an eighth.
Everything else, and any JPEG simplejpeg refuses (CMYK, a recoverable error), goes to OpenCV (several
times faster than PIL), then PIL. Whatever the file holds (grayscale, RGBA, palette, 16-bit, float TIFF,
CMYK JPEG, BMP) comes out as (H, W, 3) uint8 RGB. EXIF orientation is ignored on every path, so the
reduced and the full decode of a file agree (and PIL, which ignores it too). DICOM files are
comp.data.dicom's: the table in comp.data.readers sends each file to its reader.

High bit depth (16-bit PNG/TIFF, how radiographs exported from DICOM are stored): the data's real range
becomes 0..255, the same way on the OpenCV and the PIL path: 0..2^b-1 when the PNG's sBIT chunk says b
significant bits (a 12-bit radiograph: 0..4095), else for grey images the image's own range (its min to
its max, as a DICOM without a window is shown, so a DICOM and its 16-bit export look the same), else
(16-bit colour, or a grey image of one value) the full 0..65535. Keeping the top 8 bits instead would
leave a 12-bit radiograph 16 grey levels.

A file that cannot be used raises `ImageError` with its `kind`: missing, empty, truncated or corrupt.
OpenCV decodes a JPEG cut short without complaint (the missing rows come out grey), so truncation is
checked from the file's tail before decoding: a JPEG must end with its EOI marker, a PNG with IEND, a
BMP must be as long as its header says. A file failing that check is confirmed with PIL, which reads
the whole stream, so a file with harmless trailing bytes after its end marker still loads.

Nothing global is set at import: OpenCV's thread count is set to one in the kit's worker processes only
(comp.data.loader.ignore_stop_signals, the cache's pool initializer), and its log is silenced only around
the kit's own decode calls (`quiet_opencv`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np

from comp.data.image_base import ImageError, file_size, repaired, stretch

try:
    import simplejpeg
except ImportError:  # Kaggle's Python image has no simplejpeg: OpenCV's reduced decode gives the same pixels
    simplejpeg = None

SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# (offset, bytes) at the start of each format: JPEG SOI, PNG signature, BMP, TIFF little/big endian, WebP
MAGIC = ((0, b"\xff\xd8\xff"), (0, b"\x89PNG\r\n\x1a\n"), (0, b"BM"), (0, b"II*\x00"), (0, b"MM\x00*"),
         (8, b"WEBP"))
_HAS_LOG = hasattr(cv2, "utils") and hasattr(cv2.utils, "logging")


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's log silenced for the calls inside (a bad file is reported by ImageError instead), and put
    back as it was after: the kit changes no process-wide setting of a library the user's code shares."""
    if not _HAS_LOG:
        yield
        return
    old = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # returns the level it replaces
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


_TAIL = 1024  # bytes read from a file's end to find its end marker


_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def _decode_jpeg(data: bytes, target: int | None) -> np.ndarray | None:
    """libjpeg-turbo's decode, reduced to the smallest scale whose both sides are >= `target`; None when
    the file is refused (CMYK, any warning: strict), which then goes to the general path.

    simplejpeg picks among the scales n/8; without it (Kaggle's image) OpenCV's IMREAD_REDUCED_* decodes
    at 1/8, 1/4 or 1/2 (the largest reduction that still covers `target`), EXIF orientation ignored as
    everywhere else. At the scales both have the pixels are the same (tests/data/test_images.py)."""
    try:
        if simplejpeg is not None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=target or 0, min_width=target or 0)
        flag = cv2.IMREAD_COLOR
        if target:
            from PIL import Image

            with Image.open(BytesIO(data)) as im:  # reads the header only
                w, h = im.size
            # libjpeg's scaled side is ceil(side / r)
            flag = next((f for r, f in _REDUCED if -(-w // r) >= target and -(-h // r) >= target), flag)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
        return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    except (ValueError, OSError):
        return None


def looks_complete(path: Path, size: int) -> bool | None:
    """Whether the file ends where its format says it ends: False when cut short, None when the
    format has no end marker we know (TIFF, WebP, ...)."""
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    return ends_complete(head, tail, size)


def ends_complete(head: bytes, tail: bytes, size: int) -> bool | None:
    """`looks_complete` on an image's first 6 bytes, its last _TAIL bytes and its size in bytes."""
    if head[:2] == b"\xff\xd8":  # JPEG: the EOI marker; entropy-coded data never holds FF D9
        return b"\xff\xd9" in tail
    if head[:4] == b"\x89PNG":
        return b"IEND" in tail
    if head[:2] == b"BM":
        declared = int.from_bytes(head[2:6], "little")  # bfSize; some writers leave it 0
        return None if declared == 0 else size >= declared
    return None


def png_sbit(path: Path | bytes) -> int | None:
    """The significant bits of a PNG (a file, or its bytes) from its sBIT chunk (the largest over its
    channels), None without one or for another format. Reads only the chunk headers before the image data."""
    try:
        with (BytesIO(path) if isinstance(path, bytes) else open(path, "rb")) as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(256):
                head = f.read(8)
                if len(head) < 8 or head[4:] in (b"IDAT", b"IEND"):
                    return None
                n = int.from_bytes(head[:4], "big")
                if head[4:] == b"sBIT":
                    bits = f.read(n)
                    return max(bits) if bits else None
                f.seek(n + 4, 1)  # the data and its CRC
    except OSError:
        return None
    return None


def depth_to_uint8(img: np.ndarray, sbit: int | None) -> np.ndarray:
    """A uint16 image (grey or colour, any channel order) → uint8 by the rule of the module docstring."""
    grey = img.ndim == 2 or img.shape[2] == 1
    lo, hi = 0, 65535
    if sbit and sbit < 16:
        hi = 2**sbit - 1
    elif grey and not sbit:
        lo, hi = int(img.min()), int(img.max())
        if hi == lo:
            lo, hi = 0, 65535
    return stretch(np.arange(65536), lo, hi)[img]  # one table lookup per pixel


def to_rgb_uint8(img: np.ndarray, sbit: int | None = None, path: Path | None = None) -> np.ndarray:
    """Any array cv2.imread(IMREAD_UNCHANGED) returns (BGR order) → (H, W, 3) uint8 RGB; `sbit` is the
    PNG's significant bits (png_sbit) for a 16-bit image.

    A float image's NaN and infinite values (a float TIFF's no-data) are shown as its lowest finite value,
    with a warning naming `path` (comp.data.image_base.repaired): stretched as they are, one NaN made the
    whole image black.

    Raises:
        ImageError: a float image with no finite value (`path` named)."""
    if img.dtype == np.uint16:  # 16-bit PNG/TIFF: the data's real range (module docstring)
        img = depth_to_uint8(img, sbit)
    elif img.dtype != np.uint8:  # float or 32-bit TIFF: stretch its range to 0..255
        img = img.astype(np.float32)
        bad = ~np.isfinite(img)
        if bad.any():
            if bad.all():
                raise ImageError("corrupt", Path(path or "<array>"), "no finite value: every pixel NaN or infinite")
            img = np.where(bad, img[~bad].min(), img)
            if path is not None:
                repaired(path, [f"{int(bad.sum())} of {bad.size} values NaN or infinite: shown as the lowest value"])
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:  # BGRA: composite on black, as the image shows on a dark background
        alpha = img[:, :, 3:4].astype(np.uint16)
        img = ((img[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_raster(path: Path, target: int | None = None) -> np.ndarray:
    """Decode `path` (JPEG, PNG, TIFF, BMP, WebP, or anything OpenCV or PIL opens) into (H, W, 3) uint8 RGB.
    With `target` (the side it will be resized to), a JPEG is decoded at the smallest scale that keeps both
    sides >= target, which is most of the speed-up on full-size fundus photographs.

    Raises:
        ImageError: the file is missing, empty, truncated, or not a decodable image.
    """
    path = Path(path)
    size = file_size(path)
    try:
        complete = looks_complete(path, size)
    except OSError as e:  # a folder named like an image, no read permission
        raise ImageError("corrupt", path, e.strerror or str(e)) from None
    if complete is False:  # cut short, or trailing bytes after the end: let PIL decide
        return _read_with_pil(path, complete)
    with quiet_opencv():
        img = _decode_jpeg(_bytes_of(path), target) if path.suffix.lower() in (".jpg", ".jpeg") else None
        if img is None:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # never applies EXIF orientation
            if raw is None:
                return _read_with_pil(path, complete)
            img = to_rgb_uint8(raw, png_sbit(path) if raw.dtype == np.uint16 else None, path)
    return img


def _bytes_of(path: Path) -> bytes:
    """The file's bytes; b"" when it cannot be read (the general path then says why)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def decode_raster(data: bytes, name: Path, target: int | None = None) -> np.ndarray:
    """`read_raster` on an image's encoded bytes (a JPEG or PNG held in an HDF5 store, comp.data.hdf5): the
    same decoders, the same truncation check from the tail, the same (H, W, 3) uint8 RGB. `name` is what an
    error names (the store and the id). A JPEG is told by its SOI marker, not by a suffix.

    Raises:
        ImageError: no bytes (empty), cut short (truncated), or not a decodable image (corrupt), naming `name`.
    """
    if not data:
        raise ImageError("empty", name)
    complete = ends_complete(data[:6], data[-_TAIL:], len(data))
    if complete is False:
        return _read_with_pil(name, complete, data)
    with quiet_opencv():
        img = _decode_jpeg(data, target) if data[:3] == b"\xff\xd8\xff" else None
        if img is None:
            raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # no EXIF orientation
            if raw is None:
                return _read_with_pil(name, complete, data)
            img = to_rgb_uint8(raw, png_sbit(data) if raw.dtype == np.uint16 else None, name)
    return img


def _read_with_pil(path: Path, complete: bool | None, data: bytes | None = None) -> np.ndarray:
    """Fallback for what OpenCV cannot open (some CMYK JPEG and palette variants) and the judge of files
    whose tail looked wrong (`complete` False): PIL reads the whole stream and fails on a truncated one.
    A failure is 'truncated' when the tail said so (or, for formats without an end marker, PIL does).
    16-bit grey (PIL's I;16 modes) and float images map to 8 bits exactly as on the OpenCV path; 16-bit
    colour PNGs come as PIL gives them (its top 8 bits). With `data`, those bytes are read, `path` only named."""
    from PIL import Image

    try:
        with Image.open(BytesIO(data) if data is not None else path) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                arr = np.asarray(im)
                if arr.dtype.kind in "iu" and arr.size and 0 <= arr.min() and arr.max() < 65536:
                    arr = arr.astype(np.uint16)
                sbit = png_sbit(data if data is not None else path) if arr.dtype == np.uint16 else None
                return to_rgb_uint8(arr, sbit, path)
            return np.asarray(im.convert("RGB")).copy()
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        cut = complete is False or (complete is None and "truncat" in msg.lower())
        kind = "truncated" if cut else "corrupt"
        raise ImageError(kind, path, msg) from None
