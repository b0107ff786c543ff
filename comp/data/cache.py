"""The pre-resized cache: every image decoded, preprocessed and resized once, then read by training.

Layout: `<images.cache_dir or <parent of data.root>/cache>/<root name>-<size>px-<hash>/` mirrors the
download, one entry per image: `train_images/abc.png` → `train_images/abc.png.png` (or `.npy`). The hash
covers what decides the pixels (image_size, images.preprocess, the DICOM windows and frame, CACHE_VERSION:
a DICOM is stored windowed like any other image), so another setting gets
a folder of its own and is built afresh while the old one stays valid. `cache.json` in the folder
records the settings.

Entries are written to a temporary name and renamed into place, so a build killed at any moment
leaves only whole entries; rerunning scripts/prepare.py skips them and builds the rest.

A replaced image is noticed: `manifest.json` in the folder records each entry's source as
[size in bytes, mtime_ns] when prepare built or checked it (an image in an HDF5 store: the store's, so a
rewritten store rebuilds its entries; `train-image.hdf5/ISIC_0015670` → `train-image.hdf5/ISIC_0015670.npy`).
Prepare rebuilds an entry whose source no longer matches its record (an entry without a record, left by a
killed build, is trusted when it is newer than its source), and the loader decodes such an image from its
source instead of reading the stale entry (one `os.stat` per read). `scripts/prepare.py --rebuild-cache`
rebuilds every entry.

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
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comp import io
from comp.config import REPO_ROOT, resolve_path
from comp.data.cache_manifest import (  # noqa: F401  (imported from here by the tests and mil_cache)
    MANIFEST,
    manifest_key,
    open_folder,
    read_manifest,
    record,
    up_to_date,
)
from comp.data.competition import Problem
from comp.data.dicom import DicomOptions
from comp.data.dicom import from_config as dicom_options
from comp.data.image_base import ImageError
from comp.data.images import quiet_opencv
from comp.data.preprocess import check_steps, load_preprocessed
from comp.data.readers import source_stamp  # [size, mtime_ns] of an image's source file (or store)
from comp.log import log, progress
from comp.system import GUARD, process_context, rerun_main, unguarded_main, usable_cpus

CACHE_VERSION = 4  # bump when decoding or a preprocessing step changes the pixels it produces (3: 16-bit range;
# 4: DICOM headers repaired, an enhanced image's functional groups read)
MIN_PARALLEL = 64  # fewer images than this are not worth starting worker processes for


def cache_settings(cfg: Any) -> dict[str, Any]:
    """What decides a cache entry's pixels; named DICOM windows as their numbers, `file` for the file's own."""
    dicom = dicom_options(cfg)
    return {"version": CACHE_VERSION, "image_size": int(cfg.image_size),
            "preprocess": check_steps(cfg.images.preprocess),
            "dicom_windows": [list(w) if w else "file" for w in dicom.windows], "dicom_frame": dicom.frame}


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
    with quiet_opencv():  # a bad entry is reported by the ImageError below, not OpenCV's log
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError("corrupt", path, "a cache entry; delete the cache folder and rerun scripts/prepare.py")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageLoader:
    """`load(path) -> (size, size, 3) uint8 RGB`: the cache entry when there is one whose source is
    unchanged since prepare recorded it in `manifest` (same size and mtime), else the source decoded and
    preprocessed exactly as the cache would store it. Picklable for DataLoader workers."""

    def __init__(self, size: int, steps: Sequence[str], root: Path | None = None, folder: Path | None = None,
                 fmt: str = "png", manifest: dict[str, list[int]] | None = None, dicom: DicomOptions | None = None):
        self.size, self.steps, self.root, self.folder, self.fmt = size, list(steps), root, folder, fmt
        self.manifest = manifest or {}
        self.warned = False
        self.dicom = dicom

    def __call__(self, path: str) -> np.ndarray:
        if self.folder is not None:
            entry = entry_path(self.folder, self.root, path, self.fmt)
            stamp = self.manifest.get(manifest_key(self.folder, entry))
            if stamp is not None and stamp == source_stamp(path) and entry.is_file():
                return read_entry(entry, self.fmt)
            if not self.warned:  # once per loader (per worker): the cache is behind the download
                self.warned = True
                log(f"images: {path} changed or is not in the cache since scripts/prepare.py built it; decoding "
                    f"from the source (prepare.py caches the competition's, data.extra's and data.pseudo's images "
                    f"into {self.folder}: rerun it after they change; other images are always decoded)")
        return load_preprocessed(path, self.size, self.steps, self.dicom)


def image_loader(cfg: Any, comp: Any) -> Callable[[str], np.ndarray]:
    """`load(path) -> (image_size, image_size, 3) uint8` for the Dataset: from the cache when
    `images.cache` is on and scripts/prepare.py built it (entries of changed sources excepted), else
    decoded (and preprocessed) on the fly."""
    steps, dicom = check_steps(cfg.images.preprocess), dicom_options(cfg)
    if not cfg.images.cache:
        return ImageLoader(cfg.image_size, steps, dicom=dicom)
    folder = cache_folder(cfg)
    if not folder.is_dir():
        log(f"images: no cache at {folder} yet; decoding on the fly (scripts/prepare.py builds it)")
        return ImageLoader(cfg.image_size, steps, dicom=dicom)
    manifest = read_manifest(folder)
    if not manifest:
        log(f"images: the cache at {folder} has no {MANIFEST} (an older kit built it); decoding on the fly "
            f"until scripts/prepare.py records it")
        return ImageLoader(cfg.image_size, steps, dicom=dicom)
    return ImageLoader(cfg.image_size, steps, comp.root, folder, cfg.images.cache_format, manifest, dicom)


def _ignore_sigint() -> None:
    """Cache worker initializer: SIGINT (a terminal's Ctrl-C reaches the whole group) is left to the main
    process; SIGTERM still ends a worker with its group. OpenCV on one thread: the workers are the
    parallelism."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End `pool` now, not when its workers are done: the queued chunks are cancelled and every worker is
    terminated (SIGTERM) and reaped before this returns.

    `shutdown(wait=False, cancel_futures=True)` alone cancels only what is not yet in the call queue: each
    worker still finishes its chunk in hand and the chunks already queued (up to 32 images each), and the
    interpreter's exit then waits for them (concurrent.futures joins its manager thread at exit, and
    multiprocessing joins non-daemonic children), so a Ctrl-C under load could take a minute
    (tests/data/test_cache_resume.py). Killing a worker mid-entry is safe by design: an entry is written to
    a temporary file and renamed (write_entry), and the next build deletes the temporaries.
    Python 3.14's `ProcessPoolExecutor.terminate_workers` does the same; before it, the executor's
    `_processes` map (stable since Python 3.2) names the workers."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        if proc.is_alive():
            proc.terminate()
    for proc in workers:
        proc.join()  # a terminated process ends at once: SIGTERM is not ignored by the workers
    pool.shutdown(wait=True)  # the manager thread sees the dead workers, cleans up and ends


def _work(job: tuple[str, str | None, int, list[str], str, DicomOptions]) -> Problem | None:
    """Check one image and, with an entry path, write its cache entry. Runs in a worker process.
    Only a failed decode (ImageError) makes a Problem."""
    path, entry, size, steps, fmt, dicom = job
    try:
        img = load_preprocessed(path, size, steps, dicom)
    except ImageError as e:  # decoding failed: the file is missing, empty, truncated or corrupt
        return Problem(e.kind, path, e.detail)
    # anything else (a ValueError or cv2.error of a preprocessing step on a decoded image) is the kit's bug,
    # not the file's: it propagates, and comp.cli reports it as an internal error with its traceback
    if entry is not None:
        write_entry(img, Path(entry), fmt)
    return None


def _rerun_hint(method: str) -> str:
    """The other cause of a dead cache worker, named when it can be the one: a main script of the user's
    (not one of the kit's scripts/) that the workers import again, which re-runs the kit's calls it makes
    outside its `if __name__ == "__main__":` guard (one without any guard is caught before the pool starts)."""
    script = rerun_main(method)
    if script is None or script.resolve().parent == REPO_ROOT / "scripts":
        return ""
    return (f"; or the workers ({method} start) ran {script} again from the top: keep every call of the kit in it "
            f"under `{GUARD}`")


def run_jobs(work: Callable[[Any], Any], jobs: list[Any], workers: int | None, desc: str) -> list[Any]:
    """`[work(job) for job in jobs]` in parallel over worker processes, with a progress line `desc`: the
    image cache's and the MIL cache's (comp.data.mil_cache) builds.

    Args:
        workers: processes; default all usable cores, or none (in this process) for fewer than MIN_PARALLEL
            jobs. A main script without an `if __name__ == "__main__":` guard, which each worker would run
            again, gets the build in this process and a warning saying so (comp.system.unguarded_main).

    Raises:
        RuntimeError: a worker process died (killed by the system); what it wrote before is kept.
    """
    if workers is None:
        workers = usable_cpus() if len(jobs) >= MIN_PARALLEL else 1
    ctx = process_context()
    if workers > 1 and (script := unguarded_main(ctx.get_start_method())) is not None:
        log(f"warning: images: building the cache in this process, not in {workers} worker processes: {script} has "
            f"no `{GUARD}` guard, so each worker ({ctx.get_start_method()} start) would run it again from the top; "
            f"put its calls under that guard for the parallel build")
        workers = 1
    bar = progress(len(jobs), desc)
    results: list[Any] = []
    try:
        if workers <= 1:
            for res in map(work, jobs):
                results.append(res)
                bar.update(1)
        else:  # forkserver (spawn on Windows): clean workers, not forks of a parent holding torch/BLAS threads.
            # concurrent.futures rather than multiprocessing.Pool: a worker killed by the OS (out of memory)
            # breaks the executor with an error, where a Pool would wait forever for its lost result.
            # The workers ignore SIGINT: a Ctrl-C to the process group is the main process's to act on (it
            # stops the build, cancelling what is queued), not a worker failure breaking the pool.
            chunk = max(1, min(32, len(jobs) // (workers * 8)))
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ignore_sigint)
            try:
                for res in pool.map(work, jobs, chunksize=chunk):
                    results.append(res)
                    bar.update(1)
            except BrokenProcessPool:
                stop_pool(pool)
                raise RuntimeError(f"a worker process of the {desc} build died (killed by the system: out of memory? "
                                   f"{workers} workers{_rerun_hint(ctx.get_start_method())}); the entries written "
                                   f"so far are kept, rerun scripts/prepare.py") from None
            except BaseException:  # Ctrl-C, a user error: the queued images are not built
                stop_pool(pool)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
    return results


def process_images(cfg: Any, root: Path, paths: Sequence[str], workers: int | None = None,
                   rebuild: bool = False) -> list[Problem]:
    """Decode every image once, in parallel over all cores: check it and, with `images.cache` on, write
    its cache entry and record its source in the manifest (an entry whose source is unchanged is skipped:
    a killed build resumes; one whose source changed is rebuilt). Returns the images that cannot be used.

    Args:
        workers: processes; default all usable cores, or none (in this process) for a few images. A main
            script without an `if __name__ == "__main__":` guard, which each worker would run again, gets
            the build in this process and a warning saying so (comp.system.unguarded_main).
        rebuild: rebuild every entry (`scripts/prepare.py --rebuild-cache`).
    """
    steps, fmt, dicom = check_steps(cfg.images.preprocess), cfg.images.cache_format, dicom_options(cfg)
    folder = cache_folder(cfg) if cfg.images.cache else None
    jobs = []
    manifest = open_folder(folder) if folder is not None else {}
    stamps: dict[str, tuple[str, list[int] | None]] = {}  # entry key -> (source, its stamp now)
    for p in dict.fromkeys(paths):
        entry = entry_path(folder, root, p, fmt) if folder is not None else None
        if entry is not None:
            key, stamp = manifest_key(folder, entry), source_stamp(p)
            stamps[key] = (p, stamp)
            if not rebuild and up_to_date(manifest, key, entry, stamp):
                continue
        jobs.append((p, None if entry is None else str(entry), int(cfg.image_size), steps, fmt, dicom))
    desc = "cache images" if folder is not None else "check images"
    problems = [q for q in run_jobs(_work, jobs, workers, desc) if q is not None]
    if folder is not None:
        record(folder, manifest, stamps, {q.path for q in problems})
    if folder is not None and not problems:
        meta = {**cache_settings(cfg), "format": fmt, "root": str(root), "images": len(dict.fromkeys(paths))}
        io.write_json(folder / "cache.json", meta)
    return sorted(problems, key=lambda q: q.path)
