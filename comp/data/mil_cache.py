"""The MIL cache: each source of a multiple-instance row (a series, a view, an image's tiles; comp.data.mil)
decoded, windowed, preprocessed and resized once into one uint8 array (S, image_size, image_size, C), C = 1
for grey frames and 3 for colour or several DICOM windows, read by memory map: an epoch reads arrays, not
DICOMs (`make bench`: 32 slices from the cache against decoding them).

Layout: `<image cache folder>/mil-<hash>/` (comp.data.cache.cache_folder: the pixel settings), the hash
covering the MIL settings that decide a source's frames (mil.source, order, tile_size, tissue, max_tiles);
one `<source under data.root>.npy` per source, written atomically, with the image cache's manifest rules: a
source whose files changed (a series folder's stamp: its files' count, total size and newest mtime) is
rebuilt by prepare and decoded on the fly by the loader until then; a killed build resumes.

`MilLoader(path, seed)` gives a row's (N, image_size, image_size, 3) uint8 instances: `mil.instances` per
source (series and study), per row (views, cycling over the views; tiles), picked by comp.data.mil.pick.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comp import io
from comp.data.cache import cache_folder, entry_path, image_loader, run_jobs
from comp.data.cache_manifest import manifest_key, open_folder, read_manifest, record, up_to_date
from comp.data.dicom import DicomOptions
from comp.data.dicom import from_config as dicom_options
from comp.data.image_base import ImageError
from comp.data.layouts import Problem
from comp.data.mil import order_slices, pick, sources, tile_pick
from comp.data.preprocess import check_steps, load_preprocessed
from comp.data.readers import read_image, resize, source_stamp
from comp.errors import UserError
from comp.log import log

MIL_CACHE_VERSION = 1


def mil_folder(cfg: Any) -> Path:
    """The MIL cache folder of this config: under the image cache folder, by the MIL settings' hash."""
    m = cfg.mil
    s = {"version": MIL_CACHE_VERSION, "source": m.source, "order": m.order, "tile_size": int(m.tile_size),
         "tissue": float(m.tissue), "max_tiles": int(m.max_tiles)}
    return cache_folder(cfg) / f"mil-{hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:8]}"


def frame_files(folder: Path) -> list[Path]:
    """The files of a series folder (hidden files and sub-folders left out)."""
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]


def stamp(source: Path) -> list[int] | None:
    """What a source was built from: a file's [size, mtime_ns] (comp.data.readers.source_stamp); a series
    folder's [files, total bytes, newest mtime_ns]; None when it is gone."""
    if not source.is_dir():
        return source_stamp(source)
    stats = [p.stat() for p in frame_files(source)]
    return [len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    """(S, H, W, C): C = 1 when every frame is grey (three equal channels), else 3."""
    arr = np.stack(frames)
    grey = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    return np.ascontiguousarray(arr[..., :1] if grey else arr)


def tiles_of(img: np.ndarray, tile: int, tissue: float, keep: int, size: int, where: str) -> np.ndarray:
    """The tiles of a large (H, W, 3) image: a grid of `tile` px squares, each kept when its share of tissue
    (pixels neither near white, all channels > 220, nor near black, all < 20: a slide's glass and its
    scanner's padding) is at least `tissue`; the `keep` with most tissue, most first, each resized to `size`.
    An image without such a tile keeps its one with most tissue (a warning). Returns (T, size, size, 3)."""
    h, w = img.shape[:2]
    cells = []
    for y in range(0, max(h - tile, 0) + 1, tile):
        for x in range(0, max(w - tile, 0) + 1, tile):
            t = img[y:y + tile, x:x + tile]
            background = (t > 220).all(-1) | (t < 20).all(-1)
            cells.append((1.0 - float(background.mean()), y, x))
    cells.sort(key=lambda c: -c[0])
    kept = [c for c in cells if c[0] >= tissue][:keep]
    if not kept:
        log(f"warning: {where}: no {tile} px tile holds {tissue:.0%} tissue (mil.tissue); kept the one with most "
            f"({cells[0][0]:.0%})")
        kept = cells[:1]
    return np.stack([resize(img[y:y + tile, x:x + tile], size) for _, y, x in kept])


def decode_source(source: Path, kind: str, size: int, steps: Sequence[str], dicom: DicomOptions | None,
                  order: str = "position", tile: int = 256, tissue: float = 0.25, keep: int = 64) -> np.ndarray:
    """One source's frames as (S, size, size, C) uint8 (module docstring): a series folder's slices in
    order (comp.data.mil.order_slices), a view, or an image's tiles.

    Raises:
        ImageError: an image that cannot be decoded (naming the file); a series folder that is empty or whose
            slices all fail (a broken slice among good ones is left out with a warning).
        UserError: slices in different planes (naming the series)."""
    if kind == "tiles":  # the slide at full resolution (images.preprocess is for whole images, not tiles)
        return tiles_of(read_image(source, dicom=dicom), tile, tissue, keep, size, str(source))
    if not source.is_dir():
        return _stack([load_preprocessed(source, size, steps, dicom)])
    files = frame_files(source)
    if not files:
        raise ImageError("empty", source, "a series folder without any file")
    files = order_slices(files, order, f"series {source}")
    frames, bad = [], []
    for f in files:  # a broken slice is left out of its series (a warning); a series without one usable is not
        try:
            frames.append(load_preprocessed(f, size, steps, dicom))
        except ImageError as e:
            bad.append(e)
    if not frames:
        raise ImageError(bad[0].kind, source, f"no usable slice in the series: {len(bad)} of {len(files)} cannot "
                                              f"be read, e.g. {bad[0].path.name} ({bad[0].detail or bad[0].kind})")
    if bad:
        log(f"warning: series {source}: {len(bad)} of {len(files)} slices cannot be read and are left out, e.g. "
            f"{bad[0].path.name}: {bad[0]}")
    return _stack(frames)


def _build(job: tuple[str, str, str, int, list[str], DicomOptions, str, int, float, int]) -> Problem | None:
    """Decode one source and write its entry (a worker process). A file or series that cannot be used is a
    Problem; anything else is the kit's bug and propagates."""
    source, entry, kind, size, steps, dicom, order, tile, tissue, keep = job
    try:
        arr = decode_source(Path(source), kind, size, steps, dicom, order, tile, tissue, keep)
    except ImageError as e:
        return Problem(e.kind, str(e.path) if getattr(e, "path", None) else source, e.detail)
    except UserError as e:
        return Problem("corrupt", source, str(e))
    if entry:  # images.cache off: checked only
        io.save_npy(entry, arr, what="MIL cache entry", durable=False, unique=True,
                    hint=" (images.cache_dir)")
    return None


def process_rows(cfg: Any, root: Path, paths: Sequence[str], workers: int | None = None,
                 rebuild: bool = False) -> list[Problem]:
    """Check every MIL row's sources and, with images.cache on, build their arrays in parallel across sources
    (comp.data.cache.run_jobs: a progress line; a killed build resumes, an unchanged source is skipped).
    Returns the sources that cannot be used (a study without a series mil.series asks for: `missing`)."""
    steps, dicom, m = check_steps(cfg.images.preprocess), dicom_options(cfg), cfg.mil
    folder = mil_folder(cfg) if cfg.images.cache else None
    problems: list[Problem] = []
    wanted: dict[str, None] = {}
    for p in dict.fromkeys(paths):
        try:
            wanted.update(dict.fromkeys(str(s) for s in sources(cfg, p)))
        except UserError as e:
            problems.append(Problem("missing", p, str(e)))
    manifest = open_folder(folder) if folder is not None else {}
    stamps: dict[str, tuple[str, Any]] = {}
    jobs = []
    for s in wanted:
        entry = entry_path(folder, root, s, "npy") if folder is not None else ""
        if folder is not None:
            key, now = manifest_key(folder, entry), stamp(Path(s))
            stamps[key] = (s, now)
            if not rebuild and up_to_date(manifest, key, entry, now):  # a killed build's entries stand
                continue
        jobs.append((s, str(entry), m.source, int(cfg.image_size), steps, dicom, m.order, int(m.tile_size),
                     float(m.tissue), int(m.max_tiles)))
    problems += [q for q in run_jobs(_build, jobs, workers, "cache MIL sources" if folder else "check MIL sources")
                 if q is not None]
    if folder is not None:
        record(folder, manifest, stamps, {q.path for q in problems})
    return sorted(problems, key=lambda q: q.path)


class MilLoader:
    """`load(path, seed=None) -> (N, size, size, 3) uint8`: a MIL row's instances (module docstring), from the
    cache where prepare built an unchanged source's array, else decoded. `seed` (training): the jittered pick;
    None (validation, test): the fixed one. Picklable for DataLoader workers."""

    takes_seed = True  # comp.data.loader.ImageDataset passes the sample's seed

    def __init__(self, cfg: Any, root: Path | None, folder: Path | None, manifest: dict[str, Any]):
        m = cfg.mil
        self.kind, self.n, self.slices = m.source, int(m.instances), int(m.slices)
        self.size, self.steps, self.dicom = int(cfg.image_size), check_steps(cfg.images.preprocess), dicom_options(cfg)
        self.order, self.tile, self.tissue, self.keep = m.order, int(m.tile_size), float(m.tissue), int(m.max_tiles)
        self.cfg, self.root, self.folder, self.manifest = cfg, root, folder, manifest
        self.per_row = m.augment == "row"  # one augmentation draw per row (ImageDataset reads it)
        # images per row (the loader's shared-memory budget): per series for a study of named series
        self.instances = self.n * (len(m.series) if m.source == "study" and len(m.series) else 1)
        self.warned = False
        # per process (each loader worker its own): a row's sources and whether a source's entry is current,
        # worked out once: listing a study's series (SeriesDescription reads) and stamping a series (a stat
        # per slice) are not redone every epoch
        self.resolved: dict[str, list[Path]] = {}
        self.current: dict[Path, Path | None] = {}

    def frames(self, source: Path) -> np.ndarray:
        """A source's (S, size, size, C) array: memory-mapped from the cache, else decoded."""
        if self.folder is not None:
            if source not in self.current:
                entry = entry_path(self.folder, self.root, source, "npy")
                rec = self.manifest.get(manifest_key(self.folder, entry))
                self.current[source] = entry if rec is not None and rec == stamp(source) and entry.is_file() else None
            if self.current[source] is not None:
                return np.load(self.current[source], mmap_mode="r")
            if not self.warned:
                self.warned = True
                log(f"images: {source} changed or is not in the MIL cache since scripts/prepare.py built it; "
                    f"decoding from the source (rerun prepare.py)")
        return decode_source(source, self.kind, self.size, self.steps, self.dicom, self.order, self.tile,
                             self.tissue, self.keep)

    def __call__(self, path: str, seed: int | None = None) -> np.ndarray:
        srcs = self.resolved.get(path)
        if srcs is None:
            srcs = self.resolved[path] = sources(self.cfg, path)
        out = []
        if self.kind == "views":
            views = [self.frames(s) for s in srcs]
            for j in range(self.n):
                out.append(_instance(views[j % len(views)], np.zeros((1, 1), np.int64))[0])
            return np.stack(out)
        if self.kind == "study" and not self.cfg.mil.series:  # every series, one stack: `n` over all of them
            return self._stacked([self.frames(s) for s in srcs], seed)
        for k, s in enumerate(srcs):
            arr = self.frames(s)
            sub = None if seed is None else [seed, k]
            if self.kind == "tiles":
                idx = tile_pick(len(arr), self.n, None if sub is None else hash_seed(sub))[:, None]
            else:
                idx = pick(len(arr), self.n, self.slices, None if sub is None else hash_seed(sub))
            out.append(_instance(arr, idx))
        return np.concatenate(out)

    def _stacked(self, arrays: list[np.ndarray], seed: int | None) -> np.ndarray:
        """`n` instances spread over the series of a study read as one stack in order (a patient with one
        series or two gives the same number), each instance's 2.5D neighbours from its own series."""
        ends = np.cumsum([len(a) for a in arrays])
        centre = pick(int(ends[-1]), self.n, 1, None if seed is None else hash_seed([seed, 0]))[:, 0]
        out = []
        for c in centre:
            k = int(np.searchsorted(ends, c, side="right"))
            local = int(c - (ends[k - 1] if k else 0))
            idx = np.clip(local + np.arange(self.slices) - self.slices // 2, 0, len(arrays[k]) - 1)[None, :]
            out.append(_instance(arrays[k], idx)[0])
        return np.stack(out)


def hash_seed(parts: list[int]) -> int:
    """One 63-bit seed from several (a sample's seed and its source's index), by NumPy's SeedSequence."""
    return int(np.random.SeedSequence(parts).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _instance(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) instances of a (S, H, W, C) stack at the (n, slices) indices `idx`: with 3 slices their
    first channels as the three channels (2.5D), with one its channels (grey repeated to three)."""
    if idx.shape[1] == 3:
        return np.stack([np.asarray(arr[idx[:, j], :, :, 0]) for j in range(3)], axis=-1)
    frames = np.asarray(arr[idx[:, 0]])
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def mil_loader(cfg: Any, comp: Any) -> MilLoader:
    """The MIL loader of the Dataset: reading the cache when images.cache is on and prepare built it."""
    if not cfg.images.cache:
        return MilLoader(cfg, None, None, {})
    folder = mil_folder(cfg)
    manifest = read_manifest(folder) if folder.is_dir() else {}
    if not manifest:
        log(f"images: no MIL cache at {folder} yet; decoding on the fly (scripts/prepare.py builds it)")
        return MilLoader(cfg, None, None, {})
    return MilLoader(cfg, comp.root, folder, manifest)


def sample_loader(cfg: Any, comp: Any) -> Any:
    """The Dataset's loader for this config: a MIL row's instances (`mil_loader`) when mil.source is set, else
    one image (comp.data.cache.image_loader)."""
    return mil_loader(cfg, comp) if cfg.mil.source != "none" else image_loader(cfg, comp)
