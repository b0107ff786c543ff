"""The pre-resized cache: every image decoded, preprocessed and resized once, then read by training.

Layout: `<images.cache_dir or <parent of data.root>/cache>/<root name>-<size>px-<hash>/` mirrors the
download, one entry per image: `train_images/abc.png` → `train_images/abc.png.png` (or `.npy`). The hash
covers what decides the pixels (image_size, images.preprocess, CACHE_VERSION), so another setting gets
a folder of its own and is built afresh while the old one stays valid. `cache.json` in the folder
records the settings.

Entries are written to a temporary name and renamed into place, so a build killed at any moment
leaves only whole entries; rerunning scripts/prepare.py skips them and builds the rest. The cache
assumes the download does not change in place: after replacing images, delete the folder.

Format (`images.cache_format`), measured on skimage's 1411 px fundus photograph with crop_circle +
ben_graham, best of 30 reads on one CPU core:
    512 px   png 260 KB, 5.4 ms to read    npy 768 KB, 0.13 ms
    384 px   png 158 KB, 2.9 ms            npy 432 KB, 0.12 ms
    the source decoded and preprocessed instead: 50 ms from a q95 JPEG, 121 ms from a PNG (APTOS ships
    PNGs up to 4288x2848, several times that)
Both are lossless, so training from the cache sees exactly the pixels decoding would give (tested). npy
is the default: a read costs next to nothing, so one loader worker feeds thousands of images a second
and the GPU, not the CPU, sets the pace (APTOS: 4.3 GB at 512 px). png is for datasets whose raw arrays
would not fit the disk: DR 2015's 88,702 images at 512 px take ~23 GB as png against 68 GB raw (the GPU
machine has a 64 GB disk, a Kaggle notebook 20 GB), and configs/dr2015.yaml sets it; 5 ms a read is
still ~1,500 images/s on 8 loader workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from comp import io
from comp.config import resolve_path
from comp.data.competition import Problem
from comp.data.images import ImageError
from comp.data.preprocess import check_steps, load_preprocessed
from comp.errors import UserError
from comp.log import log

CACHE_VERSION = 2  # bump when decoding or a preprocessing step changes the pixels it produces
MIN_PARALLEL = 64  # fewer images than this are not worth starting worker processes for


def cache_settings(cfg: Any) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "image_size": int(cfg.image_size),
            "preprocess": check_steps(cfg.images.preprocess)}


def cache_folder(cfg: Any) -> Path:
    """The cache folder for this config's data and image settings."""
    root = resolve_path(cfg.data.root)
    base = resolve_path(cfg.images.cache_dir) if cfg.images.cache_dir else root.parent / "cache"
    s = cache_settings(cfg)
    digest = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:8]
    return base / f"{root.name}-{s['image_size']}px-{digest}"


def entry_path(folder: Path, root: Path, path: str | Path, fmt: str) -> Path:
    """Where the cached copy of source image `path` lives: its path under data.root, plus `.<fmt>`."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:  # an image outside data.root (an absolute glob): keyed by its full path
        rel = Path("_outside") / (hashlib.sha256(str(path).encode()).hexdigest()[:16] + "_" + Path(path).name)
    return folder / f"{rel}.{fmt}"


def write_entry(img: np.ndarray, path: Path, fmt: str) -> None:
    """Write an RGB uint8 image as `fmt` (png | npy), atomically (comp.io; a per-process temporary, as
    several processes build the cache at once). A grey image (three equal channels) is stored as one PNG
    channel; cv2.imread(IMREAD_COLOR) expands it back exactly.

    Raises:
        UserError: the disk is full or the cache folder not writable (naming the entry).
    """
    kw = {"what": "cache entry", "durable": False, "unique": True, "hint": " (images.cache_dir)"}
    if fmt == "npy":
        io.save_npy(path, np.ascontiguousarray(img), **kw)
        return
    gray = bool((img[:, :, 0] == img[:, :, 1]).all() and (img[:, :, 1] == img[:, :, 2]).all())
    ok, buf = cv2.imencode(".png", img[:, :, 0] if gray else cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # a uint8 (S, S[, 3]) array always encodes: a failure is a bug, not the user's
        raise RuntimeError(f"OpenCV could not encode {path} as PNG")
    io.write_bytes(path, buf.tobytes(), **kw)


def read_entry(path: Path, fmt: str) -> np.ndarray:
    """A cache entry as (S, S, 3) uint8 RGB."""
    if fmt == "npy":
        return np.load(path)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError("corrupt", path, "a cache entry; delete the cache folder and rerun scripts/prepare.py")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageLoader:
    """`load(path) -> (size, size, 3) uint8 RGB`: the cache entry when there is one, else the source
    decoded and preprocessed exactly as the cache would store it. Picklable for DataLoader workers."""

    def __init__(self, size: int, steps: Sequence[str], root: Path | None = None, folder: Path | None = None,
                 fmt: str = "png"):
        self.size, self.steps, self.root, self.folder, self.fmt = size, list(steps), root, folder, fmt

    def __call__(self, path: str) -> np.ndarray:
        if self.folder is not None:
            entry = entry_path(self.folder, self.root, path, self.fmt)
            if entry.is_file():
                return read_entry(entry, self.fmt)
        return load_preprocessed(path, self.size, self.steps)


def image_loader(cfg: Any, comp: Any) -> Callable[[str], np.ndarray]:
    """`load(path) -> (image_size, image_size, 3) uint8` for the Dataset: from the cache when
    `images.cache` is on and scripts/prepare.py built it, else decoded (and preprocessed) on the fly."""
    steps = check_steps(cfg.images.preprocess)
    if not cfg.images.cache:
        return ImageLoader(cfg.image_size, steps)
    folder = cache_folder(cfg)
    if not folder.is_dir():
        log(f"images: no cache at {folder} yet; decoding on the fly (scripts/prepare.py builds it)")
        return ImageLoader(cfg.image_size, steps)
    return ImageLoader(cfg.image_size, steps, comp.root, folder, cfg.images.cache_format)


def _work(job: tuple[str, str | None, int, list[str], str]) -> Problem | None:
    """Check one image and, with an entry path, write its cache entry. Runs in a worker process.
    Only a failed decode (ImageError) makes a Problem."""
    path, entry, size, steps, fmt = job
    try:
        img = load_preprocessed(path, size, steps)
    except ImageError as e:  # decoding failed: the file is missing, empty, truncated or corrupt
        return Problem(e.kind, path, e.detail)
    # anything else (a ValueError or cv2.error of a preprocessing step on a decoded image) is the kit's bug,
    # not the file's: it propagates, and comp.cli reports it as an internal error with its traceback
    if entry is not None:
        write_entry(img, Path(entry), fmt)
    return None


def process_images(cfg: Any, root: Path, paths: Sequence[str], workers: int | None = None) -> list[Problem]:
    """Decode every image once, in parallel over all cores: check it and, with `images.cache` on, write
    its cache entry (entries already there are skipped: a killed build resumes). Returns the images
    that cannot be used.

    Args:
        workers: processes; default all usable cores, or none (in this process) for a few images.
    """
    steps, fmt = check_steps(cfg.images.preprocess), cfg.images.cache_format
    folder = cache_folder(cfg) if cfg.images.cache else None
    jobs = []
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot make the image cache folder {folder}: {e.strerror or e} (images.cache_dir, "
                            f"or images.cache=false)") from None
        for stale in folder.rglob(".*.tmp"):  # left by a killed build: never renamed, never trusted
            stale.unlink(missing_ok=True)
    for p in dict.fromkeys(paths):
        entry = entry_path(folder, root, p, fmt) if folder is not None else None
        if entry is None or not entry.is_file():
            jobs.append((p, None if entry is None else str(entry), int(cfg.image_size), steps, fmt))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if len(jobs) >= MIN_PARALLEL else 1
    desc = "cache images" if folder is not None else "check images"
    bar = tqdm(total=len(jobs), desc=desc, dynamic_ncols=True, leave=False)
    problems: list[Problem] = []
    try:
        if workers <= 1:
            results = map(_work, jobs)
            for res in results:
                problems += [res] if res else []
                bar.update(1)
        else:  # forkserver: clean workers, not forks of a parent that may hold torch/BLAS threads
            ctx = multiprocessing.get_context("forkserver")
            with ctx.Pool(workers) as pool:
                chunk = max(1, min(32, len(jobs) // (workers * 8)))
                for res in pool.imap_unordered(_work, jobs, chunksize=chunk):
                    problems += [res] if res else []
                    bar.update(1)
    finally:
        bar.close()
    if folder is not None and not problems:
        meta = {**cache_settings(cfg), "format": fmt, "root": str(root), "images": len(dict.fromkeys(paths))}
        io.write_json(folder / "cache.json", meta)
    return sorted(problems, key=lambda q: q.path)
