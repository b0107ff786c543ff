"""The table of image readers, chosen by file, and the two calls the rest of the kit makes: `read_image`
(any file → (H, W, 3) uint8 RGB) and `load_image` (the same, resized square).

Each reader says which files it takes, by name (suffixes) and by content (magic bytes at an offset), and
how to read them, in the shape of MONAI's `SUPPORTED_READERS` with each reader's `verify_suffix`: the
first reader of READERS that claims a file reads it, and a file no reader claims goes to FALLBACK
(OpenCV, then PIL, which name a file neither can open `corrupt`). This module imports the readers; they
import only comp.data.image_base, never this module or each other.

    reader   suffixes                               magic (offset: bytes)
    dicom    .dcm .dicom                            128: DICM (an extension-less DICOM, or a misnamed one)
                                                    0: a first tag of group 0002/0008 (no preamble)
    images   .jpg .jpeg .png .tif .tiff .bmp .webp  0: JPEG SOI, PNG, BM, TIFF II/MM; 8: WEBP
    parquet  .parquet                               0: PAR1 (a window of a recording: `<file>#<offset>`): by its
                                                    columns a spectrogram (comp.data.spectrogram) or an EEG
                                                    (comp.data.eeg, made into the montage's spectrogram)
    nifti    .nii .nii.gz                           344: n+1\\0 (NIfTI-1), 4: n+2\\0 (NIfTI-2); a gzip by suffix only
                                                    (an axial slice of a volume: `<file>#<slice>`, comp.data.nifti)

A path `<file>#<offset>` (comp.data.image_base.window_path: one labelled window of a recording, HMS 2024)
is read as the window of `<file>` that starts `offset` seconds in; for a NIfTI volume the number is the
index of an axial slice (comp.data.nifti). Only the readers flagged `windows` (recordings, volumes) take
one, any other refuses it naming the path.

A new format is a reader module with its suffixes, magic and read function, and one row here.

A store holds many images' encoded bytes in one file (CONTAINERS: HDF5, `.h5 .hdf5`, comp.data.hdf5, ISIC
2024). An image in it is named by a member path `<store>/<key>`; its bytes come from the store and go to the
reader of the table that claims them, by the key's suffix or the bytes' magic, through that reader's `decode`
(JPEG/PNG/...: comp.data.images.decode_raster; a reader without one, DICOM, refuses stored bytes).
Whatever the caller asks that a reader may need travels in `Request` (the target side of the resize, the
DICOM options; a new reader's options are a new field).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from comp.data import dicom as dicom_reader
from comp.data import eeg as eeg_reader
from comp.data import hdf5 as hdf5_store
from comp.data import images as image_reader
from comp.data import nifti as nifti_reader
from comp.data import spectrogram as spectrogram_reader
from comp.data.dicom import DicomOptions
from comp.data.image_base import ImageError, file_size, split_window


@dataclass(frozen=True)
class Request:
    """What the caller asks of a read: `target`, the side the image will be resized to (a reader may decode
    smaller, never below it); `dicom`, the DICOM windows and frame (None: the file's own window, one frame);
    `offset`, where a window of a recording starts, in seconds, or a volume's slice (None: a whole file)."""

    target: int | None = None
    dicom: DicomOptions | None = None
    offset: float | None = None


@dataclass(frozen=True)
class Reader:
    """One row of the table: the files it takes and how to read one into (H, W, 3) uint8 RGB."""

    name: str
    suffixes: tuple[str, ...]  # lower-case endings of the file name (".nii.gz" works too)
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes): the file's content says it is this format
    read: Callable[[Path, Request], np.ndarray]
    decode: Callable[[bytes, Path, Request], np.ndarray] | None = None  # the same from the bytes of an image
    # held in a store (CONTAINERS), named by its member path; None: this format is not read from a store
    windows: bool = False  # reads a window of a recording (Request.offset)

    def takes(self, name: str, head: Callable[[], bytes]) -> bool:
        """Whether this reader claims a file called `name` whose first bytes `head()` returns (read only
        when a suffix does not already decide)."""
        if name.lower().endswith(self.suffixes):
            return True
        return any(head()[offset:offset + len(m)] == m for offset, m in self.magic)


READERS: tuple[Reader, ...] = (
    # pydicom reads the whole file; comp.data.dicom_header checks the pixel data's length against the header
    Reader("dicom", dicom_reader.SUFFIXES, dicom_reader.MAGIC,
           lambda path, req: dicom_reader.read_dicom(path, req.dicom)),
    Reader("images", image_reader.SUFFIXES, image_reader.MAGIC,
           lambda path, req: image_reader.read_raster(path, req.target),
           lambda data, name, req: image_reader.decode_raster(data, name, req.target)),
    # pyarrow reads the table; the window, log scale and NaN fill are comp.data.spectrogram's / eeg's
    Reader("parquet", spectrogram_reader.SUFFIXES, spectrogram_reader.MAGIC,
           lambda path, req: _read_parquet(path, req.offset), windows=True),
    # nibabel reads the volume; the offset is a slice index; images.dicom_windows through DICOM's LINEAR window
    Reader("nifti", nifti_reader.SUFFIXES, nifti_reader.MAGIC,
           lambda path, req: nifti_reader.read_nifti(path, req.offset, req.dicom.windows if req.dicom else (),
                                                     dicom_reader.apply_window), windows=True),
)
# OpenCV then PIL: they know formats no suffix here names (GIF, PPM, ...)
FALLBACK = next(r for r in READERS if r.name == "images")
HEAD = max(offset + len(m) for r in READERS for offset, m in r.magic)  # bytes of a file the magic needs


@dataclass(frozen=True)
class Container:
    """A file format holding many images' bytes, each under a key: which member paths it takes (`member`:
    path -> (store, key) or None), how to read one's bytes, and the stamp of a store for the cache."""

    name: str
    member: Callable[[str | Path], tuple[Path, str] | None]
    read: Callable[[Path, str], bytes]
    keys: Callable[[Path], list[str]]
    stamp: Callable[[Path], list[int] | None]
    suffixes: tuple[str, ...]


CONTAINERS: tuple[Container, ...] = (
    Container("hdf5", hdf5_store.member, hdf5_store.read_bytes, hdf5_store.keys, hdf5_store.stamp,
              hdf5_store.SUFFIXES),
)


def container_of(path: str | Path) -> tuple[Container, Path, str] | None:
    """(container, store, key) when `path` names an image inside a store, else None (a plain file)."""
    for c in CONTAINERS:
        m = c.member(path)
        if m is not None:
            return c, m[0], m[1]
    return None


def store_of(path: str | Path) -> Container | None:
    """The container format of a store file `path` (by suffix), None for anything else."""
    return next((c for c in CONTAINERS if str(path).lower().endswith(c.suffixes)), None)


def image_bytes(path: str | Path) -> bytes:
    """The encoded bytes of an image: its file's, or for an image in a store the bytes stored under its key.

    Raises:
        ImageError: the store or key cannot be read (missing, truncated, corrupt).
        OSError: a plain file cannot be read."""
    held = container_of(path)
    if held is not None:
        return held[0].read(held[1], held[2])
    return Path(path).read_bytes()


def source_stamp(path: str | Path) -> list[int] | None:
    """[size in bytes, mtime in ns] of the file an image's bytes come from: the image's file (for a window
    `<file>#<offset>`, the recording's), or for an image in a store the store's (the key is in the cache
    entry's name); None when it cannot be read."""
    held = container_of(path)
    if held is not None:
        return held[0].stamp(held[1])
    try:
        st = os.stat(split_window(path)[0])
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_parquet(path: Path, offset: float | None) -> np.ndarray:
    """A window of a parquet recording: an EEG (electrodes of the banana montage, no `time` column) as
    comp.data.eeg makes it, else a spectrogram. A file whose schema cannot be read goes to the spectrogram
    reader, which names what is wrong with it (truncated, not parquet)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 (a cut or foreign file: read_spectrogram raises its ImageError)
        names = []
    if eeg_reader.is_eeg(names):
        return eeg_reader.read_eeg(path, offset)
    return spectrogram_reader.read_spectrogram(path, offset)


def _head(path: Path) -> bytes:
    """The first HEAD bytes of `path`; b"" when it cannot be read (its reader then says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(HEAD)
    except OSError:  # a folder named like an image, no read permission
        return b""


def reader_for(path: Path) -> Reader:
    """The reader of `path`: the first of READERS that takes it by name or content, else FALLBACK. The
    file's head is read once, and only when no suffix before decides."""
    cache: list[bytes] = []

    def head() -> bytes:
        if not cache:
            cache.append(_head(path))
        return cache[0]

    return next((r for r in READERS if r.takes(path.name, head)), FALLBACK)


def read_image(path: str | Path, target: int | None = None, dicom: DicomOptions | None = None) -> np.ndarray:
    """Decode `path` (a file, or an image in a store: `<store>/<key>`) into (H, W, 3) uint8 RGB with the
    reader the table picks for it. `target`: the side it
    will be resized to (a JPEG is then decoded at the smallest DCT scale that keeps both sides >= target);
    `dicom`: the DICOM options (windows, frame; default: the file's own window, single-frame only).

    A path `<file>#<offset>` reads the window of a recording from `offset` seconds, or of a NIfTI volume
    the axial slice `offset` (module docstring).

    Raises:
        ImageError: the file is missing, empty, truncated, not a decodable image, or unsupported (an offset
            on a file that is not a recording, a window past its end); for an image in a store also the store
            (missing, truncated, corrupt) or its key (missing: store and id named).
    """
    held = container_of(path)
    if held is not None:
        container, store, key = held
        data = container.read(store, key)
        name = Path(path)
        reader = next((r for r in READERS if r.takes(key, lambda: data[:HEAD])), FALLBACK)
        if reader.decode is None:
            raise ImageError("unsupported", name, f"{reader.name} bytes inside a {container.name} store are not read; "
                             f"extract them to files")
        return reader.decode(data, name, Request(target, dicom))
    path, offset = split_window(path)
    file_size(path)
    reader = reader_for(path)
    if offset is not None and not reader.windows:
        raise ImageError("unsupported", path, f"a window offset ({offset:g} s) on a {reader.name} file; only "
                                              f"recordings and volumes "
                                              f"({', '.join(r.name for r in READERS if r.windows)}) take one")
    return reader.read(path, Request(target, dicom, offset))


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize to `size`: INTER_AREA when shrinking 2x or more (it averages every source pixel, no
    aliasing), INTER_LINEAR otherwise. Below 2x bilinear's 2x2 taps already reach every source pixel, and
    OpenCV's INTER_AREA at a fractional ratio costs 5x more (0.53 ms against 0.10 ms for 256 -> 224 px, the
    usual step after a reduced JPEG decode)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if min(img.shape[:2]) >= 2 * size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode and resize to (size, size, 3) uint8 RGB, with no preprocessing."""
    return resize(read_image(path, target=size), size)
