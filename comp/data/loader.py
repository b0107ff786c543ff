"""Batches: the Dataset of uint8 images, the epoch sampler, DataLoader builders, and the copy of each batch
to the device (normalised there).

Two choices make training resumable bit for bit, with any number of workers:
- the sample order of an epoch is a pure function of (seed, epoch) (`EpochSampler`), so a resumed run
  skips exactly the samples already seen by starting the same order at a position;
- each sample's augmentation is seeded from (seed, epoch, position), carried by the sampler with the
  index, so no worker RNG state has to be saved.
Workers hand over uint8 (3, H, W) tensors, or (N, 3, H, W) for a MIL row (4x less to copy than float);
`to_input` normalises on the device.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import signal
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from comp.data.augment import augment_instances, seed_transform
from comp.data.readers import load_image
from comp.log import log
from comp.system import GUARD, default_start_method, unguarded_main

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDataset(Dataset):
    """Images at `size` as (3, size, size) uint8 tensors, with their target (-1 when unknown).

    Args:
        paths: one image file per sample.
        labels: the targets (comp.tasks): (N,) integer classes, (N,) float values, or (N, K) float rows
            (labels, distributions); or None for an unlabeled test set.
        size: square side the image is resized to when decoded.
        transform: an albumentations pipeline applied after resizing, or None.
        load: `load(path) -> (size, size, 3) uint8`; default decodes the file (comp.data.cache reads the cache).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int] | np.ndarray | None, size: int,
                 transform: Any = None, load: Callable[[str], np.ndarray] | None = None):
        self.paths = list(paths)
        labels = None if labels is None else np.asarray(labels)
        if labels is not None:
            labels = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64)
        self.labels = labels
        self.size = size
        self.transform = transform
        self.load = load or partial(load_image, size=size)
        self.rows = getattr(self.load, "takes_seed", False)  # a MIL row (comp.data.mil_cache): many images
        self.per_row = getattr(load, "per_row", True)  # MIL: one augmentation draw per row (mil.augment)
        self.instances = int(getattr(load, "instances", 1))  # MIL: images per row (the loader's memory budget)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.rows:  # (N, H, W, 3) instances
            return self._instances(index, seed)
        img = self.load(self.paths[index])
        if self.transform is not None:
            if seed is not None:  # each transform its own stream from the sample's seed (comp.data.augment)
                seed_transform(self.transform, seed)
            img = self.transform(image=img)["image"]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, H, W) uint8
        return x, self._target(index)

    def _instances(self, index: int, seed: int | None) -> tuple[torch.Tensor, Any]:
        """A MIL row as (N, 3, H, W) uint8: its instances picked with the sample's seed (the training jitter;
        fixed without one), augmented by comp.data.augment.augment_instances (mil.augment)."""
        imgs = augment_instances(self.transform, self.load(self.paths[index], seed), seed, self.per_row)
        return torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))), self._target(index)

    def _target(self, index: int) -> Any:
        """The row's target: -1 when unknown, a tensor for dense rows, else a float or int."""
        if self.labels is None:
            return -1
        y = self.labels[index]
        return torch.from_numpy(y) if y.ndim else (float(y) if y.dtype.kind == "f" else int(y))


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The sample order of one epoch: a permutation of range(n), or n draws with replacement in
    proportion to `weights` (the weighted sampler). A pure function of its arguments."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=g).numpy()
    w = torch.as_tensor(weights, dtype=torch.double)
    return torch.multinomial(w, n, replacement=True, generator=g).numpy()


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) for one epoch, starting at `start` (resume), and for DDP only
    this rank's share (every world_size-th position, the order padded to a multiple of world_size as
    DistributedSampler does). `set_epoch` moves it to another epoch: a persistent DataLoader keeps one
    sampler for the whole run and its workers (the main process draws the indices, so they see it).

    `len()` is the number of samples this rank still draws this epoch."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, weights: np.ndarray | None = None,
                 rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.weights = n, seed, weights
        self.rank, self.world_size = rank, world_size
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        seed, world_size = self.seed, self.world_size
        order = epoch_order(self.n, seed, epoch, self.weights)
        pad = (-len(order)) % world_size
        order = np.concatenate([order, order[:pad]]) if pad else order
        positions = np.arange(len(order))
        keep = positions % world_size == self.rank
        self.items = [(int(i), (seed * 1_000_003 + epoch) * 10_000_019 + int(p) & 0x7FFFFFFF)
                      for i, p in zip(order[keep], positions[keep], strict=True)][start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


SHM_BUDGET = 2**30  # bytes of batches one loader keeps in flight at most (in /dev/shm), at most SHM_SHARE of it
SHM_SHARE = 0.25  # of /dev/shm's size per loader: the train and validation loaders may both be busy at once
MAX_PREFETCH = 4  # batches each worker loads ahead (torch's default is 2)


def shm_budget(shm_bytes: int | None = None) -> int:
    """The bytes of batches one loader may hold in shared memory: SHM_BUDGET, or SHM_SHARE of /dev/shm's
    size when that is smaller (64 MiB in a default Docker container). `shm_bytes` None reads /dev/shm."""
    if shm_bytes is None:
        try:
            shm_bytes = shutil.disk_usage("/dev/shm").total
        except OSError:  # no /dev/shm (macOS, Windows): torch uses other shared memory there
            return SHM_BUDGET
    return min(SHM_BUDGET, int(shm_bytes * SHM_SHARE))


def batches_in_flight_bytes(batch_size: int, image_size: int, num_workers: int, prefetch_factor: int,
                            instances: int = 1) -> int:
    """Shared memory the loader's workers hold at once: each worker keeps `prefetch_factor` uint8 batches of
    (batch_size, 3, image_size, image_size) in /dev/shm until the main process takes them, or of
    (batch_size, instances, 3, image_size, image_size) for MIL rows of `instances` images."""
    return batch_size * instances * 3 * image_size * image_size * prefetch_factor * num_workers


def prefetch_factor_for(batch_size: int, image_size: int, num_workers: int, budget: int,
                        instances: int = 1) -> int | None:
    """The DataLoader's prefetch_factor: MAX_PREFETCH batches per worker, fewer when the bytes in flight
    (`batches_in_flight_bytes`) would pass `budget`, never under 1. None without workers (torch's rule)."""
    if num_workers <= 0:
        return None
    per_batch = batches_in_flight_bytes(batch_size, image_size, num_workers, 1, instances)
    return max(1, min(MAX_PREFETCH, budget // max(per_batch, 1)))


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SIGINT and SIGTERM are ignored in the workers. A Ctrl-C in a terminal
    and a scheduler's preemption (Slurm, Kubernetes, torchrun) signal every process of the job; the main
    process alone acts on them (after the current step, with a recovery checkpoint), and stops its workers
    itself. A worker killed by the signal would otherwise end the run with torch's `DataLoader worker is
    killed by signal` before anything is saved. (Workers still exit when the main process dies: torch's
    watchdog.)

    OpenCV runs on one thread in a worker: the workers are the parallelism, and OpenCV's own threads would
    fight them (set here, in the worker, not at import: importing the kit changes no setting of the user's
    process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(1)


_WORKERS: weakref.WeakSet = weakref.WeakSet()  # the worker processes this kit's loaders started


def _kill_live_workers() -> None:
    """At interpreter exit, SIGKILL the worker processes the kit's loaders started that are still alive
    (those of an iterator an exception kept referenced, or one whose torch shutdown could not stop them:
    its SIGTERM is ignored), and no other process. multiprocessing's own exit hook stops daemonic children
    with SIGTERM, which these workers ignore (`ignore_stop_signals`), and then joins them: without this the
    main process would wait forever. Registered when the first workers start, after multiprocessing's hook
    (registered when it is imported, before any process can start), so it runs before it (atexit runs
    last-registered first)."""
    workers = [w for w in list(_WORKERS) if w.is_alive()]
    if workers and hasattr(signal, "SIGCHLD"):  # torch's SIGCHLD handler would call these deaths an error
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for w in workers:
        w.kill()


@functools.cache
def _register_exit_hook() -> None:
    """`_kill_live_workers` at exit, registered once, when the kit first starts workers (never at import)."""
    atexit.register(_kill_live_workers)


class KitLoader(DataLoader):
    """torch's DataLoader whose worker processes, if still alive at interpreter exit, are killed there
    (`_kill_live_workers`): the loader's own, no other process's.

    OpenCV is put on one thread while the workers start, and back as it was after: a worker forked from a
    process whose OpenCV thread pool is running inherits the pool without its threads and hangs on its
    first OpenCV call (seen in tests/data/test_loader.py once the parent had used OpenCV's threads). With
    one thread the pool is stopped, so the workers start clean; they keep one thread (`ignore_stop_signals`)."""

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            it = super()._get_iterator()
        finally:
            cv2.setNumThreads(threads)
        _register_exit_hook()
        _WORKERS.update(getattr(it, "_workers", ()))
        return it


def _image_side(dataset: Any) -> tuple[int, int] | None:
    """The square side of the dataset's images (ImageDataset.size) and the images per sample (1, or a
    MIL dataset's int `instances`: its samples are (instances, 3, size, size)), looking through Subset-like
    wrappers."""
    while dataset is not None:
        if isinstance(getattr(dataset, "size", None), int):
            instances = getattr(dataset, "instances", 1)
            return dataset.size, instances if isinstance(instances, int) and instances > 0 else 1
        dataset = getattr(dataset, "dataset", None)
    return None


@functools.cache
def _warn_once(message: str) -> None:
    log(message)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None, num_workers: int,
                drop_last: bool = False, pin_memory: bool = False, persistent: bool = False) -> DataLoader:
    """A DataLoader over `dataset`; sequential order when `sampler` is None (validation, test).

    `persistent` keeps the worker processes between epochs (torch's persistent_workers, timm's default):
    starting 8-16 workers costs ~1 s, which at 5,000 images/s is a third of a 16,000-image epoch and
    the whole of a small fold's (measured on an H100, BENCHMARKS.md). It gets a generator of its own: the
    workers' base seed would otherwise be drawn from the global torch RNG, and a resumed run would then
    see the model's RNG (dropout) shifted by one draw.

    Shared memory: workers hand batches over through /dev/shm, batch_size x 3 x image_size^2 bytes each
    (x the dataset's `instances` for MIL rows),
    `prefetch_factor` per worker, so num_workers x prefetch_factor batches are in flight. prefetch_factor
    is MAX_PREFETCH (4), lowered (`prefetch_factor_for`) to keep that under `shm_budget()`: 1 GiB, or a
    quarter of /dev/shm's size (64 MiB in a default Docker container; `docker run --shm-size=8g`). The
    shipped configs: aptos2019 32 x 512 px x 8 workers x 4 = 805 MB; cnmc2019 64 x 384 px x 8 x 4 = 906 MB;
    dr2015 32 x 512 px x 12 workers at 3 = 906 MB (4 would be 1.2 GB). When even one batch per worker does
    not fit, the workers die of SIGBUS and comp.cli says so with the remedy (fewer num_workers, --shm-size).

    Workers ignore SIGINT/SIGTERM (`ignore_stop_signals`): the main process stops the run.

    The workers start with torch's default, the platform's start method: fork on Linux (before Python
    3.14), spawn on macOS and Windows, whose children import the main module again. A main script without
    an `if __name__ == "__main__":` guard would then run again in every worker (comp.system.unguarded_main):
    for such a script the batches are loaded in this process (num_workers=0), with a warning saying so."""
    if num_workers > 0 and (script := unguarded_main(default_start_method())) is not None:
        _warn_once(f"warning: loading batches in this process (num_workers=0, not {num_workers}): {script} has no "
                   f"`{GUARD}` guard, so each DataLoader worker ({default_start_method()} start) would run it again "
                   f"from the top; put its calls under that guard for worker processes")
        num_workers = 0
    side = _image_side(dataset)
    prefetch = prefetch_factor_for(batch_size, side[0], num_workers, shm_budget(), side[1]) if side else (
        MAX_PREFETCH if num_workers > 0 else None)
    return KitLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                     drop_last=drop_last, pin_memory=pin_memory, generator=torch.Generator(),
                     prefetch_factor=prefetch, persistent_workers=persistent and num_workers > 0,
                     worker_init_fn=ignore_stop_signals if num_workers > 0 else None)


Norm = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per RGB channel, on the 0..1 scale
IMAGENET: Norm = (IMAGENET_MEAN, IMAGENET_STD)


@functools.cache
def _normalizer(device: torch.device, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) tensors on `device`, made once per (device, norm): building them per
    batch from Python lists is a blocking host-to-device copy, a stream sync every step."""
    mean = torch.tensor(norm[0], device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm[1], device=device).view(1, 3, 1, 1)
    return mean, std


def to_input(x: torch.Tensor, device: torch.device, in_chans: int = 3, channels_last: bool = False,
             norm: Norm = IMAGENET) -> torch.Tensor:
    """uint8 (B, 3, H, W) from the loader, or (B, N, 3, H, W) (the N instances of MIL rows, comp.data.mil)
    → normalised float on `device` with the model's own (mean, std) (`norm`: comp.models.factory.input_norm;
    ImageNet's for the kit's ResNets); grayscale averaged to 1 channel when the model takes one
    (in_chans=1). The channels are dim -3 in both layouts. `channels_last` applies to 4-D batches only: a
    5-D one has no such layout (channels_last_3d means (B, C, D, H, W)), and the MIL model's convolutions
    see it as (B*N, 3, H, W), whose layout cuDNN takes from the weights already in channels_last."""
    x = x.to(device, non_blocking=True).float().div_(255)
    mean, std = _normalizer(x.device, (tuple(norm[0]), tuple(norm[1])))  # (1, 3, 1, 1): aligned on dims -3..-1
    if in_chans == 1:
        x = (x.mean(-3, keepdim=True) - mean.mean()) / std.mean()
    else:
        x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def device_batches(loader: Iterable, device: torch.device, in_chans: int = 3, channels_last: bool = False,
                   norm: Norm = IMAGENET) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(x, y, batch size) for each batch of `loader`, x normalised on `device` (`to_input`, with the
    model's `norm`), y there too.

    On CUDA the next batch is copied and normalised on a side stream while the current one computes (the
    prefetcher of NVIDIA's apex examples and timm): a 256 x 224 px uint8 batch is 38 MB, ~2 ms over
    PCIe that would otherwise stall every step. `record_stream` tells the caching allocator the tensors
    are used on the compute stream, so their memory is not handed out again while a step still reads it."""
    if device.type != "cuda":
        for xb, yb in loader:
            yield to_input(xb, device, in_chans, channels_last, norm), yb.to(device), len(xb)
        return
    stream = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    pending = None
    for xb, yb in loader:
        with torch.cuda.stream(stream):
            nxt = (to_input(xb, device, in_chans, channels_last, norm), yb.to(device, non_blocking=True), len(xb))
        if pending is not None:
            yield pending
        compute.wait_stream(stream)
        for t in nxt[:2]:
            t.record_stream(compute)
        pending = nxt
    if pending is not None:
        yield pending


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequency, scaled to mean 1 over the samples (the 'balanced' weighting of
    scikit-learn): the loss weights and, per sample, the weighted sampler's probabilities."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return len(labels) / (num_classes * np.maximum(counts, 1))
