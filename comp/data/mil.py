"""Multiple-instance rows (MIL): one row of the competition table, one label, one OOF and one submission
row, read from many images (docs/mil.md).

`mil.source` says what a row's `path` names (everything else in the kit handles rows as rows):
- series: the row's folder (`mil.folder` under data.train_images) holding one DICOM series (RSNA 2022:
  train_images/<StudyInstanceUID>/<n>.dcm);
- study: the row's folder holding one sub-folder per series (brain tumour: train/00012/{FLAIR,T1w,T1wCE,T2w};
  RSNA 2023: train_images/<patient_id>/<series_id>/), read in `mil.series` order;
- views: image files of several CSV rows joined by `mil.join` ("a.dcm|b.dcm", a breast's CC and MLO);
- tiles: one large image cut into tiles (UBC-OCEAN).
A row's sources (`sources`) are each an ordered stack of 2D frames: a series' slices, one view, an image's
tiles. comp.data.mil_cache decodes each source once into a memory-mapped array; `pick` chooses which frames
a sample reads.

Slice order (`order_slices`), as the DICOM standard defines the geometry (PS3.3 C.7.6.2.1.1): the position
of a slice along the series is ImagePositionPatient projected on the normal of the slice plane, the cross
product of ImageOrientationPatient's row and column direction cosines. Slices without the geometry are
ordered by InstanceNumber (a warning), and `mil.order: instance | name` picks either order outright. A series
whose slices lie in different planes cannot be ordered: an error naming the study and series. Slices at the
same position (a series saved twice) are kept once, with a warning.
"""

from __future__ import annotations

import functools
import re
import string
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import resolve_path
from comp.data.layouts import Problem, matched_folders
from comp.data.tables import read_csv
from comp.errors import UserError
from comp.log import log

SEP = "|"  # joins the image paths of a views row (no file name of the competitions holds it)


class _Format(string.Formatter):
    """str.format over a row's string values, where an integer spec (`{BraTS21ID:05d}`) reads the value as an
    integer first."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec[-1:] in ("d", "x", "o", "b") and isinstance(value, str):
            value = int(float(value))
        return super().format_field(value, format_spec)


def row_folder(pattern: str, row: dict[str, str], what: str) -> str:
    """The folder name of one row: `pattern` (mil.folder) formatted with the row's columns and `id`.

    Raises:
        UserError: the pattern names a column the CSV lacks, or a value that is not a number for `:05d`."""
    try:
        return _Format().format(pattern, **row)
    except KeyError as e:
        raise UserError(f"mil.folder {pattern!r} names column {e.args[0]!r}, which {what} does not have "
                        f"(its columns: {sorted(k for k in row if k != 'id')[:12]})") from None
    except ValueError as e:
        raise UserError(f"mil.folder {pattern!r} cannot format {what}'s row {row.get('id')!r}: {e}") from None


def find_folders(cfg: Any, root: Path, patterns: list[str], table: pd.DataFrame, ids: pd.Series, what: Path,
                 key: str, problems: list[Problem] | None) -> pd.Series:
    """The folder of each row (mil.source series | study): `mil.folder` formatted with the row, looked for in
    the folders `patterns` (data.train_images or data.test_images) in order; "" for a row without one (a
    `Problem('missing')` when collecting).

    Raises:
        UserError: no folder matches `patterns`, or (not collecting) a row has no folder, naming the first."""
    dirs = [d for _, d in matched_folders(root, patterns)]
    if not dirs:
        raise UserError(f"image folder not found: {root / patterns[0]} (data.{key})")
    out = []
    for (_, row), i in zip(table.astype(str).iterrows(), ids, strict=True):
        name = row_folder(cfg.mil.folder, {**row.to_dict(), "id": i}, str(what))
        hit = next((d / name for d in dirs if (d / name).is_dir()), None)
        if hit is None:
            if problems is None:
                raise UserError(f"{what}: row {i!r} has no folder {dirs[0] / name} (mil.folder={cfg.mil.folder!r} "
                                f"under data.{key})")
            problems.append(Problem("missing", str(dirs[0] / name), f"the folder of row {i} (mil.folder)"))
        out.append("" if hit is None else str(hit))
    return pd.Series(out, index=table.index, dtype=object)


def join_views(cfg: Any, frame: pd.DataFrame, table: pd.DataFrame, what: Path) -> pd.DataFrame:
    """mil.source=views: the image rows of `frame` (id, path, label...) joined into one row per `mil.join`
    value (the join columns' values joined by "_": RSNA Mammography's prediction_id), `path` their image paths
    joined by SEP in the CSV's order, the first image's label and group (the rows of one breast share them:
    RSNA's cancer label is per breast).

    Raises:
        UserError: a join column missing from the CSV, or rows of one join value with different labels."""
    cols = [str(c) for c in cfg.mil.join]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise UserError(f"{what} has no column {missing[0]!r} (mil.join)")
    key = table[cols].astype(str).apply(lambda r: "_".join(v.strip() for v in r), axis=1)
    frame = frame.assign(_mil=key.loc[frame.index].to_numpy())
    frame = frame[frame["path"] != ""]
    if "label" in frame.columns and frame["label"].map(repr).groupby(frame["_mil"]).nunique().max() > 1:
        bad = frame["label"].map(repr).groupby(frame["_mil"]).nunique()
        raise UserError(f"{what}: the images of {bad[bad > 1].index[0]!r} (mil.join {cols}) have different labels")
    joined = frame.groupby("_mil", sort=False).agg({c: "first" for c in frame.columns if c not in ("_mil", "path")})
    joined["path"] = frame.groupby("_mil", sort=False)["path"].agg(SEP.join)
    joined["id"] = joined.index.astype(str)
    return joined.reset_index(drop=True)


# --- a row's sources ------------------------------------------------------------------------------------------
def _natural(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


@functools.cache
def _described(csvs: tuple[Path, ...]) -> dict[str, str]:
    """series_id -> series_description of the CSVs `csvs` (mil.series_csv), read once per process.

    Raises:
        UserError: a CSV missing, or without the two columns (comp.data.tables.read_csv)."""
    out: dict[str, str] = {}
    for csv in csvs:
        table = read_csv(csv, ["series_id", "series_description"])
        out.update(zip(table["series_id"].str.strip(), table["series_description"].str.strip(), strict=True))
    return out


def _series_name(folder: Path, cfg: Any = None) -> str:
    """A series folder's description: from mil.series_csv by the folder's name, else its first DICOM's
    SeriesDescription; "" without one."""
    if cfg is not None and cfg.mil.series_csv:
        root = resolve_path(cfg.data.root)
        named = _described(tuple(root / str(c) for c in cfg.mil.series_csv)).get(folder.name)
        if named is not None:
            return named
    import pydicom

    first = next((p for p in sorted(folder.iterdir(), key=_natural) if p.is_file()), None)
    if first is None:
        return ""
    try:
        return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesDescription"])
                   .get("SeriesDescription", "")).strip()
    except Exception:  # not a DICOM (pydicom raises its own errors and OSError): named by folder only
        return ""


def sources(cfg: Any, path: str) -> list[Path]:
    """The sources of a row's `path`, in order: [the series folder] (series), the chosen series folders
    (study), the view files (views), [the image] (tiles).

    Raises:
        UserError: a study without a series that `mil.series` asks for, or without any series folder,
            naming the study folder and the series."""
    src = cfg.mil.source
    if src == "views":
        return [Path(p) for p in path.split(SEP)]
    folder = Path(path)
    if src != "study":
        return [folder]
    subs = sorted((p for p in folder.iterdir() if p.is_dir()), key=_natural)
    if not subs:
        raise UserError(f"study {folder} holds no series folder (mil.source=study)")
    wanted = [str(s) for s in cfg.mil.series]
    if not wanted:
        return subs
    by_name = {p.name.lower(): p for p in subs}
    out = []
    for name in wanted:
        hit = by_name.get(name.lower()) or next((p for p in subs if _series_name(p, cfg).lower() == name.lower()),
                                                None)
        if hit is None:
            raise UserError(f"study {folder} has no series {name!r} (mil.series {wanted}: by folder name or "
                            f"SeriesDescription; it has {[p.name for p in subs]})")
        out.append(hit)
    return out


def order_slices(files: list[Path], how: str, where: str) -> list[Path]:
    """The DICOM files of one series in slice order (module docstring): by position along the slice normal,
    InstanceNumber (`how`=instance, or where the geometry is missing), or natural file-name order (name).
    Slices at a position already taken are dropped with a warning.

    Raises:
        UserError: slices in different planes (ImageOrientationPatient differs), naming `where`."""
    if how == "name" or not files:
        return sorted(files, key=_natural)
    import pydicom

    tags = ["ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "Rows", "Columns"]
    heads = []
    for f in files:
        try:
            with warnings.catch_warnings():  # a broken header's complaints: the decode names the file
                warnings.simplefilter("ignore")
                heads.append(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags, force=True))
        except Exception:  # unreadable: the decode names it (an ImageError) when the slice is read
            heads.append(None)
    number = [float(getattr(h, "InstanceNumber", None) or 0) if h is not None else 0.0 for h in heads]
    sizes = {(getattr(h, "Rows", None), getattr(h, "Columns", None)) for h in heads if h is not None}
    if len(sizes) > 1:
        log(f"warning: {where}: slices of {len(sizes)} sizes {sorted(sizes, key=str)[:3]}; each is resized to "
            f"image_size")
    geometry = [h is not None and len(getattr(h, "ImagePositionPatient", []) or []) == 3
                and len(getattr(h, "ImageOrientationPatient", []) or []) == 6 for h in heads]
    if how == "instance" or not all(geometry):
        if how == "position":
            log(f"warning: {where}: {geometry.count(False)} of {len(files)} slices lack ImagePositionPatient or "
                f"ImageOrientationPatient; ordered by InstanceNumber (mil.order)")
        return [files[i] for i in sorted(range(len(files)), key=lambda i: (number[i], _natural(files[i])))]
    orient = np.array([[float(v) for v in h.ImageOrientationPatient] for h in heads])
    if np.abs(orient - orient[0]).max() > 1e-3:
        bad = int(np.flatnonzero(np.abs(orient - orient[0]).max(1) > 1e-3)[0])
        raise UserError(f"{where}: slice {files[bad].name} lies in another plane than {files[0].name} "
                        f"(ImageOrientationPatient {orient[bad].round(4).tolist()} vs {orient[0].round(4).tolist()}); "
                        f"one series must be one stack of parallel slices")
    normal = np.cross(orient[0, :3], orient[0, 3:])
    pos = np.array([[float(v) for v in h.ImagePositionPatient] for h in heads]) @ normal
    order = sorted(range(len(files)), key=lambda i: (pos[i], number[i]))
    kept = [order[0]] + [b for a, b in zip(order, order[1:], strict=False) if abs(pos[b] - pos[a]) > 1e-4]
    if len(kept) < len(order):
        log(f"warning: {where}: {len(order) - len(kept)} slice(s) repeat the position of another; kept once")
    steps = np.diff(pos[kept])
    if len(steps) >= 2 and (steps > 1.5 * np.median(steps)).any():
        gap = int(np.argmax(steps))
        log(f"warning: {where}: slice positions missing: a gap of {steps[gap]:.3g} mm after "
            f"{files[kept[gap]].name} where slices are {np.median(steps):.3g} mm apart; the instances are "
            f"spread over the slices there are")
    return [files[i] for i in kept]


def pick(frames: int, n: int, slices: int, seed: int | None) -> np.ndarray:
    """(n, slices) frame indices into a stack of `frames`: n instances evenly spread (the centre of each of n
    equal stretches; with `seed`, a uniform draw within each stretch, the training jitter), each with its
    `slices` neighbours (2.5D: i-1, i, i+1, clipped at the ends). Fewer frames than n repeat frames.
    A pure function of its arguments."""
    if frames < 1:
        raise ValueError("pick: an empty stack")  # the cache refuses empty sources; reaching here is a bug
    u = np.full(n, 0.5) if seed is None else np.random.default_rng(seed).random(n)
    centre = np.minimum(((np.arange(n) + u) * frames / n).astype(np.int64), frames - 1)
    offsets = np.arange(slices) - slices // 2
    return np.clip(centre[:, None] + offsets[None, :], 0, frames - 1)


def tile_pick(tiles: int, n: int, seed: int | None) -> np.ndarray:
    """(n,) tile indices of an image with `tiles` tiles (most tissue first): the first n (cycling when
    fewer), or with `seed` a draw of n without replacement (with, when fewer)."""
    if seed is None or tiles <= 1:
        return np.arange(n) % max(tiles, 1)
    rng = np.random.default_rng(seed)
    return rng.choice(tiles, n, replace=tiles < n)
