"""Atomic file writes: the one place in the kit that replaces a file or a folder.

Every file the kit writes (checkpoints, metrics.csv, oof.csv, folds.csv, thresholds.json, the saved
probabilities, cache entries, config.yaml) goes through `atomic_write`: the bytes go to a temporary file
in the same folder (same file system, so the rename is atomic), are flushed and fsynced, and the
temporary is renamed over the target with `os.replace`; the folder is fsynced so the rename itself
survives a power cut. A kill at any moment leaves the old file or the new one, never half of one, and
a failure of any kind (disk full, permissions, Ctrl-C) removes the temporary and leaves the old file as
it was. The same holds for whole folders built by `atomic_dir` (a download, the demo, the offline
package).

The temporary is `.<name>.tmp` beside the target (`.<name>.<pid>.tmp` with `unique=True`, for targets
several processes may write at once, such as cache entries built by a process pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from comp.errors import UserError


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temp_path(path: Path, unique: bool = False) -> Path:
    """The temporary name `atomic_write` writes `path` under, before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_open = open  # the one call that opens a file for writing (tests inject a full disk here)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], what: str = "", durable: bool = True,
                 unique: bool = False, parents: bool = True, hint: str = "; the previous one is intact") -> Path:
    """Write `path` by calling `write(f)` on a binary file object, atomically (module docstring).

    Args:
        path: the target file; its folder is created when `parents` (else it must exist).
        write: fills the open temporary file.
        what: how the error message names the file (e.g. "checkpoint"); default "file".
        durable: fsync the file and its folder (False for cache entries, which are rebuilt when lost).
        unique: a per-process temporary name, for targets written by several processes at once.
        hint: what the error message adds after the reason.

    Returns:
        `path` as a Path.

    Raises:
        UserError: the file system refused the write (disk full, read-only, permissions, a folder in the
            way), naming the file; the previous version is intact and no temporary is left.
    """
    path = Path(path)
    tmp = temp_path(path, unique)
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        with _open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        why = e.strerror or str(e) or type(e).__name__
        raise UserError(f"could not write {what + ' ' if what else ''}{path}: {why}{hint}") from None
    except BaseException:  # Ctrl-C, a bug in `write`: the half-written temporary goes too
        _unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def _unlink(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview, **kw: Any) -> Path:
    """`data` to `path`, atomically (keyword arguments: see `atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), **kw)


def write_text(path: str | Path, text: str, **kw: Any) -> Path:
    """UTF-8 `text` to `path`, atomically, line ends as given (LF)."""
    return write_bytes(path, text.encode("utf-8"), **kw)


def write_json(path: str | Path, obj: Any, **kw: Any) -> Path:
    """`obj` as indented JSON plus a newline, atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n", **kw)


def write_csv(path: str | Path, df: Any, **kw: Any) -> Path:
    """A pandas DataFrame as CSV without its index, LF line ends, atomically."""
    return atomic_write(path, lambda f: f.write(df.to_csv(index=False, lineterminator="\n").encode("utf-8")), **kw)


def save_torch(path: str | Path, obj: Any, **kw: Any) -> Path:
    """`torch.save(obj)` to `path`, atomically (a checkpoint: a plain dict of tensors and values)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), **kw)


def save_npy(path: str | Path, array: Any, **kw: Any) -> Path:
    """A NumPy array as `.npy`, atomically."""
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array), **kw)


@contextlib.contextmanager
def atomic_dir(path: str | Path, what: str = "folder") -> Iterator[Path]:
    """Build a folder in `.<name>.partial` beside `path` and rename it to `path` when the block ends
    without an error; on any error (Ctrl-C included) the partial folder is removed and `path` is left as
    it was. An existing `path` is replaced (the caller decides whether it may be). A leftover partial
    folder of a killed run is cleared first.

    Raises:
        UserError: the file system refused (naming `path`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"could not make {what} {tmp}: {e.strerror or e}") from None
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not write {what} {path}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def check_dir(path: str | Path, what: str) -> Path:
    """Check, before any work, that the folder `path` (named by config key or option `what`, e.g.
    "out_dir") is or can be made: the nearest part of it that exists must be a folder, and writable.
    Makes nothing.

    Raises:
        UserError: a file where a folder belongs (`path` itself or a parent), or a folder this user may not
            write (permissions, a read-only file system), naming both.
    """
    path = Path(path)
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        where = "it" if p == path else p
        raise UserError(f"{what} {path}: {where} is a file, not a folder; point {what} at a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        where = "it" if p == path else f"the folder {p}"
        raise UserError(f"{what} {path}: {where} is not writable (permissions or a read-only file system); "
                        f"point {what} at a folder you can write")
    return path
