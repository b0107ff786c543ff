"""Image files under a download's folders (comp.data.competition reads them into its tables): the folders
the `data.*_images` globs match, the file an id names, the images of a folder layout and their ids.

Folder entries are globs, matched shallowest first. macOS archive debris (`__MACOSX/`, `._*` files) is
skipped, and a byte-identical copy of an image already found in the same class (the chest X-ray zip holds
its tree twice, `chest_xray/` and `chest_xray/chest_xray/`) is dropped, its contents compared, not its
size; a different file at the same place of the doubled tree is an error naming both files. In the `csv`
layout an id whose file name is in two matched folders with other contents is an error naming both.

Ids in the `folders` layout are the file names without extension (`person1_bacteria_1`), as the
competitions name their images. Where a layout repeats a name, there is no such unique name, and there
is no submission to say otherwise, so every id becomes the shortest tail of its path that is unique
(`unique_ids`): `<class>/<name>` when class folders reuse a counter (`NORMAL/1.png`, `PNEUMONIA/1.png`),
`<split>/<class>/<name>` when folders read together do (`train/NORMAL/1.png`, `val/NORMAL/1.png`;
`fold_0/all/1.bmp`, `fold_1/all/1.bmp`), the extension kept when only it differs (`1.png`, `1.jpg`); a
scanned test folder's ids also stay apart from the training ids. `data.group_pattern` is matched
(re.search) against that id.
"""

from __future__ import annotations

import filecmp
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from comp.data.readers import container_of, image_bytes, store_of
from comp.errors import UserError
from comp.log import log

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}


@dataclass
class Problem:
    """One unusable image: kind is missing | empty | truncated | corrupt."""

    kind: str
    path: str
    detail: str = ""


def matched_folders(root: Path, patterns: list[str]) -> list[tuple[int, Path]]:
    """(pattern index, folder) for the existing folders matching the globs, each pattern's matches
    shallowest first, without macOS debris."""
    out: list[tuple[int, Path]] = []
    for k, pattern in enumerate(patterns):
        found = [d for d in root.glob(pattern) if d.is_dir() and "__MACOSX" not in d.relative_to(root).parts]
        out += [(k, d) for d in sorted(found, key=lambda p: (len(p.parts), str(p)))]
    return out


def matched_stores(root: Path, patterns: list[str]) -> list[tuple[int, Path]]:
    """(pattern index, store) for the image stores (HDF5 files: comp.data.readers.CONTAINERS) the globs
    match, each pattern's in path order: `data.train_images: [train-image.hdf5]` reads ISIC 2024's."""
    out: list[tuple[int, Path]] = []
    for k, pattern in enumerate(patterns):
        found = [f for f in root.glob(pattern) if store_of(f) is not None and f.is_file()]
        out += [(k, f) for f in sorted(found)]
    return out


def store_keys(store: Path) -> list[str]:
    """The image ids in `store` (its keys).

    Raises:
        UserError: the store cannot be opened (missing, truncated, not HDF5): one line naming the file."""
    container = store_of(store)
    assert container is not None, store  # matched_stores picked it by its suffix
    return container.keys(store)


def _image_files(d: Path) -> list[Path]:
    """The image files in `d` and its sub-folders at any depth (`train/cat/more/x.png` is a cat too), in path
    order, without hidden files and folders or macOS debris."""
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(d).parts))


def find_files(root: Path, patterns: list[str], ids: pd.Series, ext: str, what: Path, key: str,
                problems: list[Problem] | None) -> pd.Series:
    """Path of each id's file `<id><ext>` (or `<id>` when the id already ends with `ext`) in the first
    of the folders holding it; a byte-identical copy in a later folder (a tree unzipped twice) is ignored,
    a different file of that name (train/ and val/ both matched, each numbering from 1) is refused: the CSV
    cannot say which one its id means. Ids without a file: one error listing them, or `Problem`s when
    collecting."""
    dirs = matched_folders(root, patterns)
    stores = matched_stores(root, patterns)
    if not dirs and not stores:
        raise UserError(f"image folder not found: {root / patterns[0]} (data.{key})")
    found: dict[str, Path] = {}
    again: dict[str, list[Path]] = {}  # a name in several of the folders: files after the first
    for _, d in sorted(dirs + stores, key=lambda kd: kd[0]):  # patterns in order, folders and stores alike
        # an image in a store is named by its key (the id, the ext appended as for a file: `<id><ext>` finds it)
        entries = [d / k for k in store_keys(d)] if d.is_file() else list(d.iterdir())
        for p in entries:
            name = p.name if d.is_dir() or p.name.lower().endswith(ext.lower()) else p.name + ext
            if found.setdefault(name, p) is not p:
                again.setdefault(name, []).append(p)
    names = ids.map(lambda i: i if i.lower().endswith(ext.lower()) else i + ext)
    for name, i in zip(names, ids, strict=True):  # one id, two different files: which one it names is unknown
        other = next((p for p in again.get(name, []) if not _same_image(found[name], p)), None)
        if other is not None:
            raise UserError(f"id {i!r} in {what} names two different files in data.{key}: {found[name]} and "
                            f"{other}; narrow data.{key} to the folder that holds its image, or remove one")
    paths = names.map(found.get)
    missing = paths.isna()
    if missing.any():
        first = (dirs or stores)[0][1]
        listed = [(str(first / (n if first.is_dir() else i)), i)
                  for n, i in zip(names[missing], ids[missing], strict=True)]
        if problems is None:
            shown = ", ".join(p for p, _ in listed[:3])
            raise UserError(f"{len(listed)} id(s) in {what} have no image file in data.{key}, e.g. {shown}")
        problems += [Problem("missing", p, f"id {i!r} in {what.name}") for p, i in listed]
    return paths.map(lambda p: str(p) if p is not None else "")


def _same_image(a: Path, b: Path) -> bool:
    """Two images with the same bytes: files (`_same_bytes`), or an image in a store (its stored bytes)."""
    if container_of(a) is None and container_of(b) is None:
        return _same_bytes(a, b)
    return image_bytes(a) == image_bytes(b)


def _same_bytes(a: Path, b: Path) -> bool:
    """Byte-identical files: the sizes first, then the contents (`filecmp.cmp(shallow=False)`)."""
    return filecmp.cmp(a, b, shallow=False)


def scan(root: Path, patterns: list[str], labelled: bool, taken: frozenset[str] = frozenset()) -> pd.DataFrame:
    """(id, path, label) for every image under the folders: in their class sub-folders when `labelled`
    (label = the sub-folder's name), else in them (label ""); at any depth below (a class folder's own
    sub-folders are of its class).

    A file at the same place as an earlier one in a copy of its tree (`_doubled`: `chest_xray/train/NORMAL/
    x.jpeg` and `chest_xray/chest_xray/train/NORMAL/x.jpeg`, a tree unzipped twice) is dropped when its
    bytes are the first one's and refused, naming both, otherwise; so is a byte-identical file of the same
    name and class elsewhere (`train/` and `val/` holding one image).
    Every other file is an image of its own, and its id is `unique_ids`' (the file name without its
    extension unless names repeat), never one of `taken` (the training ids, for a test folder)."""
    at_place: dict[str, list[tuple[Path, Path]]] = {}  # path under a matched folder -> (folder, file) kept there
    by_name: dict[tuple[str, str], list[Path]] = {}  # (label, stem) -> the files kept under that name
    rows: list[tuple[Path, str]] = []
    for _, store in matched_stores(root, patterns):  # a store holds ids, no class folders
        if labelled:
            raise UserError(f"{store} is an HDF5 image store: it has no class folders for data.layout=folders; "
                            f"read it with data.layout=csv and a labels CSV naming its ids")
        rows += [(store / k, "") for k in store_keys(store)]
    for _, d in matched_folders(root, patterns):
        subs = [p for p in sorted(d.iterdir()) if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        for sub in (subs if labelled else []) or [d]:
            label = sub.name if sub is not d else ""
            for f in _image_files(sub):
                place = f.relative_to(d).as_posix()
                first = next((g for e, g in at_place.get(place, []) if _doubled(root, e, d)), None)
                if first is not None:
                    if not _same_bytes(first, f):
                        raise UserError(f"image id {f.stem!r} appears twice under {root} with different contents: "
                                        f"{first} and {f} (the same place in two copies of the tree); remove one")
                    continue
                same = by_name.setdefault((label, f.stem), [])
                if any(_same_bytes(g, f) for g in same):
                    continue
                at_place.setdefault(place, []).append((d, f))
                same.append(f)
                rows.append((f, label))
    ids = unique_ids([f.relative_to(root) for f, _ in rows], str(root), taken)  # root.glob found them
    return pd.DataFrame({"id": ids, "path": [str(f) for f, _ in rows], "label": [lab for _, lab in rows]},
                        columns=["id", "path", "label"])


def _doubled(root: Path, a: Path, b: Path) -> bool:
    """Folders `a` and `b` are one folder of a tree held twice: the path of one under data.root ends with
    the other's (`chest_xray/train` and `chest_xray/chest_xray/train`), as an archive unzipped into itself
    leaves it; `train/` and `val/`, or `a/x/train` and `b/x/train`, are not."""
    pa, pb = a.relative_to(root).parts, b.relative_to(root).parts
    short, long = sorted((pa, pb), key=len)
    return long[len(long) - len(short):] == short


def unique_ids(rels: list[Path], where: str, taken: frozenset[str] = frozenset()) -> list[str]:
    """An id for each file (`rels`: their paths under the folder `where` names), unique among them and
    outside `taken`: the file name without its extension
    (`person1_bacteria_1`, as the competitions name their images) when those are unique, else the shortest
    tail of the path that is, applied to every file alike: `<class>/<name>` (class folders
    reusing a counter), `<split>/<class>/<name>` (train/ and val/ read together, or fold_0/ and fold_1/,
    reusing one), and with the extension where only that differs (`1.png` and `1.jpg`). Logged when not
    the plain names.

    Raises:
        UserError: no tail is unique (a test file whose whole path is a training id)."""
    deepest = max((len(r.parts) for r in rels), default=1)
    for suffix in (False, True):
        for n in range(1, deepest + 1):
            ids = ["/".join((*r.parts[-n:-1], r.name if suffix else r.stem)) for r in rels]
            if len(set(ids)) == len(ids) and taken.isdisjoint(ids):
                if n > 1 or suffix:
                    plain = [r.stem for r in rels]
                    counts = Counter(plain)
                    k = next((i for i, p in enumerate(plain) if counts[p] > 1), None)
                    why = "repeat" if k is not None else "are training image ids too"
                    k = k if k is not None else next(i for i, p in enumerate(plain) if p in taken)
                    log(f"data: file names under {where} {why} (e.g. {plain[k]!r}: {rels[k]}); ids are the last "
                        f"{n} part(s) of the path{' with the extension' if suffix else ''}, e.g. {ids[k]!r}")
                return ids
    raise UserError(f"cannot give the images under {where} unique ids: {rels[0]} and the training ids overlap; "
                    f"rename the files")
