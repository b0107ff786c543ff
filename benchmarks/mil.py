"""Section `mil` of the benchmarks (issue 27 item 8): rows of many images (comp.data.mil, docs/mil.md) on
generated CT series, as RSNA 2022 cervical spine ships them (train_images/<StudyInstanceUID>/<n>.dcm:
512 x 512 16-bit axial slices, ~200-700 a study).

(a) **Cache against decoding.** One 2.5D row (mil.source=series, mil.slices=3, mil.instances=32: 32
    instances of 3 adjacent slices, image_size 256) read by comp.data.mil_cache.MilLoader from the MIL cache
    that `process_rows` (scripts/prepare.py) builds, against the same MilLoader without the cache, which
    decodes and orders the series' DICOMs each time (`decode_source`: every slice, as the kit does when the
    cache is off or stale), and against the cheapest uncached read there could be: the slice order from the
    headers, then only the (up to 96) slices the row's instances use decoded (`decode_picked`). Interleaved
    rounds (benchmarks.common.interleaved), one core (one torch and OpenCV thread), a new training seed each
    call (the jittered pick); ratios are medians of per-round ratios. Goal: cache / decode >= 20x.
(b) **Loader against the training step.** Rows/s of comp.data.loader.ImageDataset over the cached
    MilLoader with the flips of section 1 (one draw per row, mil.augment=row) through
    comp.data.loader.make_loader (batch 2, 0 and 2 workers, persistent; the first epoch, the workers' start,
    untimed), against the seconds per row of a training step of comp.models.factory.create_mil_model
    (ResNet-50, attention pool, 32 instances of 256 px: uint8 batch -> comp.data.loader.to_input ->
    forward, BCE-with-logits, backward, AdamW step), on the CPU (fp32) and, with CUDA, on the GPU (bf16
    autocast, batch 4 rows); `step_over_loader` = a step's seconds per row / the loader's: above 1 the
    loader is not the limit.
(c) **Memory of a MIL batch.** Bytes of the uint8 batch (B, N, 3, H, W) and of its float input
    (to_input's output, 4 bytes a value), the peak of Python/NumPy allocations (tracemalloc) while the
    Dataset builds one batch from the cache and from the DICOMs, the peak GPU memory of the step with CUDA,
    and the shared memory a loader of the config's `num_workers` keeps in flight at make_loader's
    prefetch_factor (comp.data.loader.prefetch_factor_for sizes it from one image per row, not N).

The series are written once under `work` and reused (ct_<slices>x<px>_s<series>); `--quick` shrinks them
(12 slices of 64 px, 4 instances of 32 px, ResNet-18), never the code path.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from benchmarks.common import FLIPS, interleaved, median_ratio

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient: rows along +x, columns along +y (normal +z)
FULL = {"slices": 160, "px": 512, "series": 2, "rows": 8, "instances": 32, "size": 256, "rounds": 5,
        "model": "resnet50"}
QUICK = {"slices": 12, "px": 64, "series": 2, "rows": 4, "instances": 4, "size": 32, "rounds": 2,
         "model": "resnet18"}


def ct_volume(k: int, px: int, rng: np.random.Generator) -> np.ndarray:
    """(k, px, px) uint16 CT-like stored values (HU + 1024, 12 bits): air around an elliptic body of soft
    tissue with a bright spine, changing from slice to slice, with noise."""
    yy, xx = np.mgrid[:px, :px].astype(np.float32) / px
    body = ((yy - 0.5) / 0.36) ** 2 + ((xx - 0.5) / 0.42) ** 2 <= 1
    vol = np.empty((k, px, px), np.uint16)
    for i in range(k):
        r = 0.05 + 0.02 * np.sin(i / 9)
        spine = ((yy - 0.62) ** 2 + (xx - 0.5) ** 2) <= r * r
        hu = np.where(body, 40.0, -1000.0) + np.where(spine, 700.0, 0.0) + rng.normal(0, 20, (px, px))
        vol[i] = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
    return vol


def write_ct_series(folder: Path, volume: np.ndarray, study: str) -> None:
    """One axial CT series as RSNA 2022 ships it: `<instance>.dcm`, uncompressed 16-bit MONOCHROME2,
    ImagePositionPatient stepping 1 mm along the normal (instance 1 at the head: positions falling), the
    InstanceNumber in file names out of name order past 9 (1, 10, 100, 2, ...). Uncompressed is the
    fastest syntax to decode, so the cache's ratio over decoding is the smallest it can be."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for k, img in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study, series_uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = list(AXIAL)
        ds.ImagePositionPatient = [-120.0, -120.0, 100.0 - 1.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.25, 0.25], 1.0
        ds.set_pixel_data(np.ascontiguousarray(img), "MONOCHROME2", 12)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = 400, 1800  # a bone window, as the cervical spine is read
        ds.save_as(folder / f"{k + 1}.dcm", enforce_file_format=True)


def ct_set(work: Path, slices: int, px: int, series: int, rows: int) -> Path:
    """A competition folder in RSNA 2022's layout: train.csv (StudyInstanceUID, series, label) of `rows`
    rows over `series` distinct series folders train_images/<series>/<n>.dcm (rows share them: the cache
    holds each once). Written once under `work` and reused."""
    name = f"ct_{slices}x{px}_s{series}"
    root = work / name
    if not (root / "train_images").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=work))
        rng = np.random.default_rng(0)
        for s in range(series):
            write_ct_series(tmp / "train_images" / f"1.2.826.0.1.{s}", ct_volume(slices, px, rng), f"1.2.826.0.1.{s}")
        try:
            os.rename(tmp, root)
        except OSError:  # another run made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    pd.DataFrame({"StudyInstanceUID": [f"row{i:04d}" for i in range(rows)],
                  "series": [f"1.2.826.0.1.{i % series}" for i in range(rows)],
                  "label": [i % 2 for i in range(rows)]}).to_csv(root / f"train_{rows}.csv", index=False)
    return root


def mil_config(root: Path, out: Path, rows: int, instances: int, size: int, *overrides: str) -> Any:
    """The kit's config of a `ct_set`: mil.source=series, 2.5D (mil.slices=3), `instances` a row, binary."""
    from comp.experiment import load_config

    return load_config(None, [
        f"data.root={root}", "data.source=competition", f"data.train_csv=train_{rows}.csv", "data.test_csv=''",
        "data.sample_submission=''", "data.solution_csv=''", "data.id_column=StudyInstanceUID",
        "data.label_column=label", "data.train_images=[train_images]", "data.test_images=[test_images]",
        "task=binary", "metric=auc", "mil.source=series", "mil.folder='{series}'", f"mil.instances={instances}",
        "mil.slices=3", "mil.order=position", "mil.pool=attention", f"image_size={size}", "images.cache=true",
        f"images.cache_dir={out / 'cache'}", f"out_dir={out / 'run'}", "folds.n_folds=2", *overrides])


def decode_picked(loader: Any, path: str, seed: int) -> np.ndarray:
    """The cheapest uncached read of a series row: the slices ordered from their headers
    (comp.data.mil.order_slices), then only the slices the row's instances use decoded
    (comp.data.preprocess.load_preprocessed) and stacked as MilLoader does. (N, size, size, 3) uint8."""
    from comp.data.mil import order_slices, pick
    from comp.data.mil_cache import frame_files, hash_seed
    from comp.data.preprocess import load_preprocessed

    folder = Path(path)
    files = order_slices(frame_files(folder), loader.order, f"series {folder}")
    idx = pick(len(files), loader.n, loader.slices, hash_seed([seed, 0]))
    frames = {i: load_preprocessed(files[i], loader.size, loader.steps, loader.dicom) for i in np.unique(idx)}
    return np.stack([np.stack([frames[i][..., 0] for i in row], axis=-1) for row in idx])


def mil_step(net: torch.nn.Module, batch: int, n: int, size: int, device: str, amp: bool
             ) -> tuple[Callable[[], None], torch.Tensor]:
    """One training step of `net` on a resident uint8 (batch, n, 3, size, size) batch: to_input (normalised
    float on `device`), forward, BCE-with-logits against the row's target, backward, AdamW step. Returns
    the step and the float input it built (for its size)."""
    from comp.data.loader import to_input

    dev = torch.device(device)
    net = net.to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x8 = torch.randint(0, 256, (batch, n, 3, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 2, (batch, 1), device=dev).float()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(to_input(x8, dev))
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return step, to_input(x8, dev)


def device_step(model: str, n: int, size: int, steps: int, loader: dict[str, float], device: str = "cuda",
                rows: int = 4) -> dict[str, Any]:
    """Part (b) on `device` (a GPU; "cpu" only to check this code path): a `mil_step` of `rows` rows in
    bf16 autocast, timed over `steps` steps after 3 untimed ones (cuDNN's algorithm search, the allocator).
    `loader`: the loader's rows/s by `workers_<k>_rows_per_s`. Returns seconds per row, the step's time
    over the loader's (`over_loader_<k>`), the peak device memory (GiB; None on a CPU) and the float
    input's bytes."""
    from comp.models.factory import create_mil_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    step, x = mil_step(create_mil_model(model, 1, "attention"), rows, n, size, device, amp=True)
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    s = (time.perf_counter() - t0) / steps / rows
    return {"rows": rows, "seconds_per_row": s, "device": torch.cuda.get_device_name(dev) if cuda else device,
            **{k.replace("workers", "over_loader").removesuffix("_rows_per_s"): s * v for k, v in loader.items()},
            "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
            "float_input_bytes": x.nelement() * x.element_size()}


def _epoch(loader: Any) -> int:
    """One pass over `loader`; the rows it gave."""
    return sum(len(x) for x, _ in loader)


def _traced_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of Python and NumPy allocations (tracemalloc) while `fn` runs (torch's own are not seen)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_mil(work: Path, quick: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Section `mil` (module docstring): the MIL cache against decoding, the loader against the ResNet-50
    MIL training step, the memory of a batch. Returns the numbers; headline keys `mil_cache_speedup_vs_decode`
    (goal >= 20), `mil_cache_speedup_vs_decode_picked`, `mil_loader_rows_per_s`, `mil_step_over_loader`
    (above 1: the loader is not the limit) and `mil_batch_float_mib`."""
    from comp.data.augment import build_transform
    from comp.data.competition import load_competition
    from comp.data.loader import (
        EpochSampler,
        ImageDataset,
        batches_in_flight_bytes,
        make_loader,
        prefetch_factor_for,
        shm_budget,
    )
    from comp.data.mil_cache import MilLoader, mil_loader, process_rows
    from comp.models.factory import create_mil_model

    p = QUICK if quick else FULL
    n, size, rounds, batch = p["instances"], p["size"], p["rounds"], 2
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    root = ct_set(work, p["slices"], p["px"], p["series"], p["rows"])
    written = time.perf_counter() - t0
    res: dict[str, Any] = {"slices": p["slices"], "px": p["px"], "instances": n, "channels": 3, "image_size": size,
                           "rows": p["rows"], "series": p["series"], "batch": batch, "rounds": rounds,
                           "model": p["model"]}
    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cfg = mil_config(root, Path(tmp), p["rows"], n, size)
        comp = load_competition(cfg)
        paths, labels = comp.train["path"].tolist(), comp.targets(comp.train)
        t0 = time.perf_counter()
        problems = process_rows(cfg, comp.root, paths, workers=1)
        res["setup"] = {"series_write_seconds": written,
                        "cache_build_seconds_per_series": (time.perf_counter() - t0) / p["series"]}
        assert not problems, problems  # generated series: any problem is this benchmark's bug
        cached, uncached = mil_loader(cfg, comp), MilLoader(cfg, None, None, {})
        assert cached.folder is not None  # built above: read from the cache

        # (a) one row: cache against decoding, one core
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        try:
            seeds = itertools.count(1)
            row = paths[0]
            assert np.array_equal(cached(row, 7), uncached(row, 7))  # the same pixels either way
            assert np.array_equal(cached(row, 7), decode_picked(cached, row, 7))
            secs = interleaved({"cache": lambda: cached(row, next(seeds)),
                                "decode": lambda: uncached(row, next(seeds)),
                                "decode_picked": lambda: decode_picked(cached, row, next(seeds))}, rounds)
        finally:
            torch.set_num_threads(threads)
            cv2.setNumThreads(cv2_threads)
        res["row"] = {f"{k}_seconds": statistics.median(v) for k, v in secs.items()}
        res["mil_cache_speedup_vs_decode"] = median_ratio(secs["cache"], secs["decode"])
        res["mil_cache_speedup_vs_decode_picked"] = median_ratio(secs["cache"], secs["decode_picked"])

        # (b) the loader's rows/s (0 and 2 workers) against the training step's seconds per row
        ds = ImageDataset(paths, labels, size, build_transform(FLIPS, "bench"), load=cached)
        sampler = EpochSampler(len(ds), seed=0, epoch=0)
        loaders = {w: make_loader(ds, batch, sampler, w, persistent=True) for w in (0, 2)}
        for ld in loaders.values():
            _epoch(ld)  # the workers' start, the page cache
        step, x_cpu = mil_step(create_mil_model(p["model"], 1, "attention"), 1 if not quick else batch, n, size,
                               "cpu", amp=False)
        step_rows = 1 if not quick else batch
        fns = {f"loader_{w}": (lambda ld=ld: _epoch(ld)) for w, ld in loaders.items()}
        fns["step_cpu"] = step
        secs = interleaved(fns, max(2, rounds - 2))
        per_row = {k: [s / (step_rows if k.startswith("step") else p["rows"]) for s in v] for k, v in secs.items()}
        res["loader"] = {f"workers_{w}_rows_per_s": 1 / statistics.median(per_row[f"loader_{w}"]) for w in loaders}
        res["step"] = {"cpu": {"rows": step_rows, "seconds_per_row": statistics.median(per_row["step_cpu"]),
                               "over_loader_0": median_ratio(per_row["loader_0"], per_row["step_cpu"]),
                               "over_loader_2": median_ratio(per_row["loader_2"], per_row["step_cpu"])}}
        del loaders, fns  # the persistent workers end here (the lambdas hold their loaders too)
        if cuda:
            res["step"]["cuda"] = device_step(p["model"], n, size, 3 if quick else 10, res["loader"])
        else:
            res["step"]["cuda"] = {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}

        # (c) memory of a batch
        shape = (batch, n, 3, size, size)
        first = ds[(0, 1)][0]
        assert tuple(first.shape) == shape[1:]
        uint8_bytes = int(np.prod(shape))
        ds_decode = ImageDataset(paths, labels, size, build_transform(FLIPS, "bench"), load=uncached)
        cfg_workers = 8  # configs/rsna2022_cervical_spine.yaml: batch 8, 8 workers
        prefetch = prefetch_factor_for(8, size, cfg_workers, shm_budget()) or 0
        res["memory"] = {
            "batch_shape": list(shape), "uint8_bytes": uint8_bytes, "float_bytes": 4 * uint8_bytes,
            "cpu_float_input_bytes": (x_cpu.nelement() * x_cpu.element_size()) // (x_cpu.shape[0]) * batch,
            "traced_peak_bytes_cache": _traced_peak(lambda: [ds[(i, 1)] for i in range(batch)]),
            "traced_peak_bytes_decode": _traced_peak(lambda: [ds_decode[(i, 1)] for i in range(batch)]),
            "shm_prefetch_factor_8x8": prefetch,
            "shm_in_flight_bytes_8x8_assumed": batches_in_flight_bytes(8, size, cfg_workers, prefetch),
            "shm_in_flight_bytes_8x8_actual": batches_in_flight_bytes(8, size, cfg_workers, prefetch) * n,
            "shm_budget_bytes": shm_budget(),
        }
        res["mil_batch_float_mib"] = 4 * uint8_bytes / 2**20
        res["mil_loader_rows_per_s"] = res["loader"]["workers_2_rows_per_s"]
        res["mil_step_over_loader"] = res["step"]["cpu"]["over_loader_2"]

    r, m = res["row"], res["memory"]
    echo(f"7. MIL rows (issue 27): a {p['slices']}-slice CT series of {p['px']}x{p['px']} 16-bit DICOMs, "
         f"mil.source=series, {n} instances x 3 slices (2.5D), {size} px; median of {rounds} interleaved rounds")
    echo(f"   {'one row, one core':<78}{'ms':>10}{'cache x':>10}")
    for k, label in (("cache", "MilLoader from the MIL cache (process_rows: memory-mapped .npy)"),
                     ("decode", "MilLoader without the cache: decode_source, every slice, each time"),
                     ("decode_picked", "uncached, best case: order from the headers, decode only the picked slices")):
        echo(f"   {label:<78}{1000 * r[f'{k}_seconds']:>10.1f}"
             + ("" if k == "cache" else f"{res['mil_cache_speedup_vs_decode' + k[6:]]:>9.1f}x"))
    echo(f"   cache build (prepare, one worker): {res['setup']['cache_build_seconds_per_series']:.2f} s per series")
    echo(f"   loader: ImageDataset + make_loader, batch {batch}, flips: "
         + ", ".join(f"{v:.1f} rows/s with {k.split('_')[1]} workers" for k, v in res["loader"].items()))
    for dev, s in res["step"].items():
        if "skipped" in s:
            echo(f"   training step on cuda: skipped, {s['skipped']}")
            continue
        echo(f"   training step, create_mil_model({p['model']}, attention), {n} x {size} px, "
             f"{s['rows']} row(s) a batch, {dev}{' bf16' if dev == 'cuda' else ' fp32'}: "
             f"{s['seconds_per_row']:.3f} s a row = "
             f"{s['over_loader_0']:.1f}x the loader's time a row with 0 workers, {s['over_loader_2']:.1f}x with 2")
    mib = {k: v / 2**20 for k, v in m.items() if isinstance(v, int)}
    echo(f"   batch {tuple(shape)}: uint8 {mib['uint8_bytes']:.1f} MiB, float input {mib['float_bytes']:.1f} MiB; "
         f"building it (tracemalloc peak): {mib['traced_peak_bytes_cache']:.1f} MiB from the cache, "
         f"{mib['traced_peak_bytes_decode']:.1f} MiB decoding")
    echo(f"   shared memory of a loader at batch 8, 8 workers: prefetch_factor {m['shm_prefetch_factor_8x8']} sized "
         f"for {mib['shm_in_flight_bytes_8x8_assumed']:.0f} MiB, holds {mib['shm_in_flight_bytes_8x8_actual']:.0f} MiB "
         f"(N={n} instances a row); budget {mib['shm_budget_bytes']:.0f} MiB")
    return res
