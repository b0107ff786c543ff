"""HDF5 image stores: one file holding many images' encoded bytes, each under its id (ISIC 2024's
`train-image.hdf5` / `test-image.hdf5`: 401,059 JPEGs, `h5py.File(path)[isic_id][()]` the bytes of one).

An image in a store is named by a member path, `<store>/<key>` (`data/isic2024/train-image.hdf5/ISIC_0015670`):
the store's file, then the dataset's name in it. So the tables' `path` column, the cache's entries (mirroring
data.root: `train-image.hdf5/ISIC_0015670.npy`) and every error line name an image as they name a file.
This module reads the bytes; comp.data.readers hands them to the decoder their magic bytes pick (JPEG, PNG:
comp.data.images.decode_raster).

h5py is opened lazily, once per store and process: an HDF5 handle does not survive a fork (the HDF5 library's
state and the file's offset are shared with the parent; h5py's FAQ: "open files after forking"), so each
DataLoader worker or cache worker opens its own, keyed by its pid, and one whose store changed on disk
(size or mtime) is reopened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from comp.data.image_base import ImageError

SUFFIXES = (".h5", ".hdf5")

_handles: dict[str, tuple[int, tuple[int, int], Any]] = {}  # store -> (pid, [size, mtime_ns], h5py.File)


def member(path: str | Path) -> tuple[Path, str] | None:
    """(store, key) when `path` names an image inside an HDF5 store (a part of it before the last ends with
    .h5/.hdf5 and is not a folder), else None. A string test and, only for such a path, one stat."""
    s = str(path)
    low = s.lower()
    if ".h5/" not in low and ".hdf5/" not in low:  # the common case: a plain file, no stat
        return None
    parts = Path(s).parts
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(SUFFIXES):
            store = Path(*parts[:i + 1])
            if not store.is_dir():
                return store, "/".join(parts[i + 1:])
    return None


def _open_error(store: Path, e: OSError) -> ImageError:
    """The ImageError of a store h5py cannot open: missing, truncated (its end before the end the
    superblock records) or corrupt, naming the file."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not store.exists():
        return ImageError("missing", store, "HDF5 image store not found")
    kind = "truncated" if "truncated" in msg.lower() else "corrupt"
    return ImageError(kind, store, f"HDF5 image store: {msg}")


def _store(store: Path) -> Any:
    """This process's open h5py.File of `store` (opened on first use, again after a fork or a change).

    Raises:
        ImageError: the store is missing, truncated or not an HDF5 file."""
    import h5py

    key = str(store)
    try:
        st = os.stat(store)
    except OSError:
        raise ImageError("missing", store, "HDF5 image store not found") from None
    stamp = (st.st_size, st.st_mtime_ns)
    held = _handles.get(key)
    if held is not None and held[0] == os.getpid() and held[1] == stamp:
        return held[2]
    if held is not None and held[0] == os.getpid():
        held[2].close()  # this process's own handle of an older file; a forked parent's is left alone
    try:
        f = h5py.File(store, "r")
    except OSError as e:
        raise _open_error(store, e) from None
    _handles[key] = (os.getpid(), stamp, f)
    return f


def read_bytes(store: Path, key: str) -> bytes:
    """The bytes stored under `key` in `store`: a scalar opaque/bytes dataset (ISIC 2024's form), or a 1-D
    uint8 array of the encoded file.

    Raises:
        ImageError: the store cannot be opened (missing, truncated, corrupt); `key` is not in it (missing,
            naming the store and the id); the dataset is not an encoded image's bytes (corrupt).
    """
    import numpy as np

    f = _store(store)
    name = store / key
    try:
        ds = f[key]
    except KeyError:
        raise ImageError("missing", name, f"no image {key!r} in the HDF5 store {store}") from None
    if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):  # a group
        raise ImageError("corrupt", name, f"{key!r} in {store} is a group, not an image's bytes")
    try:
        value = ds[()]
    except (OSError, ValueError) as e:  # a dataset whose chunks lie past a truncated file's end
        raise ImageError("truncated" if "truncat" in str(e).lower() else "corrupt", name,
                         f"cannot read {key!r} from the HDF5 store: {str(e).splitlines()[0]}") from None
    if isinstance(value, np.void):  # opaque (h5py stores `np.void(bytes)` so)
        return value.tobytes()
    if isinstance(value, bytes):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        return value.tobytes()
    raise ImageError("corrupt", name, f"{key!r} in {store} holds {getattr(value, 'dtype', type(value).__name__)} "
                     f"{getattr(value, 'shape', '')}, not an encoded image's bytes")


def keys(store: Path) -> list[str]:
    """The names of the datasets at the top of `store` (the image ids), in the store's order. Opened and
    closed here: the listing is prepare's, the reading the loader's.

    Raises:
        ImageError: the store cannot be opened (missing, truncated, corrupt)."""
    import h5py

    try:
        with h5py.File(store, "r") as f:
            return [str(k) for k in f.keys()]
    except OSError as e:
        raise _open_error(store, e) from None


def stamp(store: Path) -> list[int] | None:
    """[size in bytes, mtime in ns] of the store file, None when it cannot be read: the source stamp of
    every image in it (comp.data.cache's manifest keys each entry by the id already)."""
    try:
        st = os.stat(store)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]
