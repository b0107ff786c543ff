"""The cache folders' bookkeeping, shared by the image cache (comp.data.cache) and the MIL cache
(comp.data.mil_cache): `manifest.json` records each entry's source stamp; a build opens its folder, skips the
entries that are up to date (a killed build resumes) and records what it built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comp import io
from comp.errors import UserError

MANIFEST = "manifest.json"  # entry (relative to the cache folder) -> [source size, source mtime_ns]


def manifest_key(folder: Path, entry: Path) -> str:
    """An entry's key in the manifest: its path under the cache folder (string slicing: a pathlib
    relative_to per read would cost as much as the entry_path call itself)."""
    return str(entry)[len(str(folder)) + 1:]


def read_manifest(folder: Path) -> dict[str, list[int]]:
    """The cache folder's manifest (entry key -> source stamp); {} when there is none or it is unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_folder(folder: Path) -> dict[str, Any]:
    """Make the cache folder `folder` for a build, delete the temporaries a killed build left (never renamed,
    never trusted), and return its manifest.

    Raises:
        UserError: the folder cannot be made (naming it and images.cache_dir)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the image cache folder {folder}: {e.strerror or e} (images.cache_dir, "
                        f"or images.cache=false)") from None
    for stale in folder.rglob(".*.tmp"):
        stale.unlink(missing_ok=True)
    return read_manifest(folder)


def up_to_date(manifest: dict[str, Any], key: str, entry: Path, stamp: list[int] | None) -> bool:
    """An entry a build can skip: its source is there (`stamp`, whose last field is the newest mtime_ns) and
    it matches the manifest's record, or, without a record (written by a killed build that never wrote the
    manifest), the entry is newer than its source."""
    if stamp is None or not entry.is_file():
        return False
    return manifest[key] == stamp if key in manifest else entry.stat().st_mtime_ns >= stamp[-1]


def record(folder: Path, manifest: dict[str, Any], stamps: dict[str, tuple[str, Any]], bad: set[str]) -> None:
    """Write `folder`'s manifest: each built entry's source stamp (`stamps`: entry key -> (source, stamp now));
    an entry whose source is in `bad` or has no stamp is deleted with its record, never to be read."""
    for key, (p, stamp) in stamps.items():
        if p in bad or stamp is None:  # no usable source: its old entry must not be read
            manifest.pop(key, None)
            (folder / key).unlink(missing_ok=True)
        else:
            manifest[key] = stamp
    io.write_text(folder / MANIFEST, json.dumps(manifest, separators=(",", ":")) + "\n", what="cache manifest",
                  hint=" (images.cache_dir)")
