"""What every image reader shares (comp.data.readers holds the table of them): `ImageError`, the one
error a file that cannot be used raises, and `stretch`, the one mapping of a high bit depth to 0..255.

The readers (comp.data.images for JPEG/PNG/TIFF/BMP/WebP, comp.data.dicom for DICOM, comp.data.spectrogram
and comp.data.eeg for parquet recordings, whose windows `window_path` names) import this module
and nothing of each other; the table imports them, so the dispatcher and its decoders never import each
other back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comp.errors import UserError
from comp.log import log

_told: set[tuple[str, str]] = set()  # (file, repairs) already logged by this process


class ImageError(UserError):
    """An image file that cannot be used; `kind` is missing | empty | truncated | corrupt | unsupported
    (a valid file this install or config cannot read: a DICOM syntax without decoder, several frames)."""

    def __init__(self, kind: str, path: Path, detail: str = ""):
        what = {"missing": "image file not found", "empty": "image file is empty (0 bytes)",
                "truncated": "image file is truncated", "corrupt": "cannot decode image file",
                "unsupported": "cannot use image file"}[kind]
        super().__init__(f"{what}: {path}" + (f" ({detail})" if detail else ""))
        self.kind, self.path, self.detail = kind, Path(path), detail


def stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`lo`..`hi` linearly to 0..255 (rounded, clipped) as uint8, same shape; all 0 when hi <= lo. The one
    mapping of every high-bit-depth path (PNG, TIFF, DICOM), so they agree to the grey level."""
    v = np.asarray(values, np.float64)
    if not hi > lo:
        return np.zeros(v.shape, np.uint8)
    return np.rint(np.clip((v - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def file_size(path: Path) -> int:
    """The size of the image file at `path` in bytes, checked before any reader opens it.

    Raises:
        ImageError: the file is missing ("missing") or has no bytes ("empty").
    """
    try:
        size = path.stat().st_size
    except OSError:
        raise ImageError("missing", path) from None
    if size == 0:
        raise ImageError("empty", path)
    return size


def read_parquet(path: Path):
    """A parquet file as a pyarrow Table, for the readers of recordings (comp.data.spectrogram, comp.data.eeg).

    Raises:
        ImageError: missing or empty; "truncated" when it does not end with parquet's PAR1 magic (the
            footer, schema and row groups, is at the end: a cut file has lost it); "corrupt" when pyarrow
            cannot read it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = file_size(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if tail != b"PAR1":
        raise ImageError("truncated", path, "no parquet footer (PAR1) at its end")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ImageError("corrupt", path, (str(e).splitlines() or [type(e).__name__])[0]) from None


WINDOW_SEP = "#"  # `<file>#<offset>`: a window of a recording (comp.data.spectrogram), one row of a labels CSV


def window_path(path: str, offset: float) -> str:
    """The virtual path of the window of the file `path` that starts `offset` seconds in: `<path>#<offset>`
    (the offset written plainly: 600, 12.5)."""
    return f"{path}{WINDOW_SEP}{np.format_float_positional(float(offset), trim='-')}"


def split_window(path: str | Path) -> tuple[Path, float | None]:
    """The file and the window offset (seconds) of a path `window_path` made; (path, None) for a plain file.
    Split at the last `#` only when what follows is a number, so a file named `scan#2.png` stays one."""
    s = str(path)
    head, sep, tail = s.rpartition(WINDOW_SEP)
    if sep:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(s), None


def repaired(path: Path, notes: list[str]) -> None:
    """Log one line `warning: image file <path> read with repairs: <note>; <note>` for a file a reader
    decoded by reading past faults in its header (each note names the element and what was used instead).
    Once per file and process: a loader decoding the file every epoch says it once."""
    text = "; ".join(dict.fromkeys(notes))
    if (str(path), text) not in _told:
        _told.add((str(path), text))
        log(f"warning: image file {path} read with repairs: {text}")
