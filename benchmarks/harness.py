"""The kit's benchmarks (BENCHMARKS.md): its input pipeline against the lab reports' PIL + torchvision loader
and timm's, its ResNets against timm's, one demo fold end to end, and a ResNet50 training step on a GPU.

`run(sections, quick)` prints each section's table as it finishes and returns one dict: the machine, each
section's numbers, and the headline ratios as top-level keys (`loader_speedup_vs_seed`,
`cache_speedup_vs_seed`, `resnet_step_ratio_vs_timm`, ...). Compared sides run interleaved round after
round, the first side rotated, and a ratio is the median of the per-round ratios: a slow spell of a shared
machine then hits both sides of a ratio alike (benchmarks.models interleaves the model step likewise).

Sections 1-4 are defined here, `recipes` in benchmarks.recipes, `predict` in benchmarks.predict_scale, `mil`
in benchmarks.mil; what they share (generated images, timing, the reference loops) is benchmarks.common, which
imports no section.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pandas as pd
import torch

from benchmarks.common import (
    FLIPS,
    SIZE,
    compute_only,
    fundus_config,
    fundus_set,
    interleaved,
    machine,
    median_ratio,
    timm_loop,
)
from benchmarks.mil import bench_mil
from benchmarks.models import bench_model_step
from benchmarks.predict_scale import bench_predict
from benchmarks.recipes import bench_recipes

# each a function of this module or a section's
SECTIONS = ("loader", "model", "e2e", "gpu", "recipes", "predict", "mil")


# ----------------------------------------------------------------------------------- 1. input pipeline


class LabDataset(torch.utils.data.Dataset):
    """The lab reports' loader: PIL decode of the whole file, then torchvision transforms per item."""

    def __init__(self, paths: list[str], labels: list[int]):
        from torchvision import transforms as T

        from comp.data.loader import IMAGENET_MEAN, IMAGENET_STD

        self.paths, self.labels = paths, labels
        self.transform = T.Compose([T.Resize(256), T.RandomCrop(SIZE), T.RandomHorizontalFlip(),
                                    T.RandomVerticalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def loaders(root: Path, out: Path) -> tuple[dict[str, torch.utils.data.Dataset], str]:
    """The datasets of section 1 over the images of `root` (a `fundus_set`), and the kit's default cache
    format; the cache is built by comp.data.prepare.prepare (what scripts/prepare.py does), as default (npy) and png."""
    import timm.data

    from comp.data.augment import build_transform
    from comp.data.cache import image_loader
    from comp.data.competition import load_competition
    from comp.data.loader import ImageDataset
    from comp.pipeline import prepare

    cfg = fundus_config(root, out / "default")
    png = fundus_config(root, out / "png", "images.cache_format=png")
    prepare(cfg)
    prepare(png)
    comp = load_competition(cfg)
    paths, labels = comp.train["path"].tolist(), comp.train["label"].tolist()
    timm_tf = timm.data.create_transform(SIZE, is_training=True, hflip=0.5, vflip=0.5, color_jitter=None)
    return {
        "lab": LabDataset(paths, labels),
        "timm": timm.data.ImageDataset(str(root / "train"), transform=timm_tf),
        "kit": ImageDataset(paths, labels, SIZE, build_transform(FLIPS, "bench")),
        "cache": ImageDataset(paths, labels, SIZE, build_transform(FLIPS, "bench"), load=image_loader(cfg, comp)),
        "cache_png": ImageDataset(paths, labels, SIZE, build_transform(FLIPS, "bench"), load=image_loader(png, comp)),
    }, cfg.images.cache_format


LOADER_NAMES = {
    "lab": "lab reports: PIL + torchvision Resize/RandomCrop/flips/ToTensor/Normalize",
    "timm": "timm: ImageDataset + create_transform (RandomResizedCrop, flips)",
    "kit": "kit: comp.data.loader.ImageDataset from the files (reduced DCT decode)",
    "cache": "kit: from the cache, images.cache_format={fmt} (the default)",
    "cache_png": "kit: from the cache, images.cache_format=png",
}


def bench_loader(work: Path, quick: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Images/s of each loader on one core (one process, no workers, one item at a time), at 512x512 and
    3000x2000; kit and cache speed-ups over the lab reports' loader."""
    shapes = {"512x512": (512, 512, 4 if quick else 64), "3000x2000": (3000, 2000, 4 if quick else 32)}
    rounds = 2 if quick else 7
    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)  # per core: ToTensor/Normalize on one thread, as in one DataLoader worker
    cv2.setNumThreads(1)  # and OpenCV's decode and resize, as the kit's workers run them
    res: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            for shape, (w, h, n) in shapes.items():
                sets, fmt = loaders(fundus_set(work, n, w, h), Path(tmp) / shape)
                secs = interleaved({k: (lambda d=d: [d[i] for i in range(len(d))]) for k, d in sets.items()}, rounds)
                res[shape] = {"images": n, **{f"{k}_ips": n / statistics.median(s) for k, s in secs.items()},
                              "kit_speedup": median_ratio(secs["kit"], secs["lab"]),
                              "cache_speedup": median_ratio(secs["cache"], secs["lab"]),
                              "cache_png_speedup": median_ratio(secs["cache_png"], secs["lab"]),
                              "timm_speedup": median_ratio(secs["timm"], secs["lab"])}
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    cols = list(shapes)
    echo(f"1. Input pipeline: images/s on one core, {SIZE} px out, num_workers=0, median of {rounds} passes")
    echo(f"   {'':<78}" + "".join(f"{c:>12}" for c in cols))
    for k, label in LOADER_NAMES.items():
        echo(f"   {label.format(fmt=fmt):<78}" + "".join(f"{res[c][f'{k}_ips']:>12.1f}" for c in cols))
    for k, label in (("kit", "kit from files"), ("cache", "kit from cache"), ("cache_png", "kit from png cache"),
                     ("timm", "timm")):
        echo(f"   {label + ' / lab reports (x, median of per-round ratios)':<78}"
             + "".join(f"{res[c][f'{k}_speedup']:>11.2f}x" for c in cols))
    return {"shapes": res, "cache_format": fmt, "loader_speedup_vs_seed": res["512x512"]["kit_speedup"],
            "cache_speedup_vs_seed": res["512x512"]["cache_speedup"],
            "cache_png_speedup_vs_seed": res["512x512"]["cache_png_speedup"]}


# --------------------------------------------------------------------------------------- 2. model step


def bench_model(quick: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """The kit's ResNets against timm's: training-step images/s (benchmarks.models.bench_model_step)."""
    cuda = torch.cuda.is_available()
    if quick:
        kw = dict(names=("resnet18",), batch=4, size=32, steps=1, rounds=2, warmup=1)
    elif cuda:
        kw = dict(names=("resnet18", "resnet50", "resnet152"), batch=64, size=224, steps=10, rounds=7, warmup=5)
    else:
        kw = dict(names=("resnet18", "resnet50", "resnet152"), batch=16, size=128, steps=2, rounds=5, warmup=1)
    rows = bench_model_step(**kw, device="cuda" if cuda else "cpu", amp=cuda, channels_last=True)
    echo(f"2. Model step (forward+backward+SGD step), batch {kw['batch']} x {kw['size']} px, channels_last"
         f"{', AMP fp16' if cuda else ', fp32'}, on {'cuda' if cuda else 'cpu'} ({torch.get_num_threads()} threads), "
         f"median of {kw['rounds']} interleaved rounds")
    echo(f"   {'model':<12}{'kit img/s':>12}{'timm img/s':>12}{'kit/timm':>10}")
    for r in rows:
        echo(f"   {r['name']:<12}{r['kit_ips']:>12.1f}{r['timm_ips']:>12.1f}{r['ratio']:>10.3f}")
    # The multi-label head and loss (comp.tasks: 11 BCE logits, RANZCR CLiP's shape) against timm's model with
    # BCE-with-logits: the kit/timm ratio should not move from the softmax one of the same depth and run.
    ml = bench_model_step(**{**kw, "names": kw["names"][:2]}, device="cuda" if cuda else "cpu", amp=cuda,
                          channels_last=True, num_classes=11, task="multilabel")
    by_name = {r["name"]: r["ratio"] for r in rows}
    echo("   multi-label (11 labels, BCE) kit/timm, and its change from the softmax ratio above:")
    for r in ml:
        echo(f"   {r['name']:<12}{r['kit_ips']:>12.1f}{r['timm_ips']:>12.1f}{r['ratio']:>10.3f}"
             f"  ({r['ratio'] / by_name[r['name']]:.3f}x)")
    return {"rows": rows, "multilabel_rows": ml, "resnet_step_ratio_vs_timm": min(r["ratio"] for r in rows),
            "multilabel_ratio_change": min(r["ratio"] / by_name[r["name"]] for r in ml)}


# -------------------------------------------------------------------------------------- 3. end to end


def bench_e2e(work: Path, quick: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """One demo fold trained for one epoch (time split into data wait and compute, from comp.train.loop's
    metrics.csv), then comp.predict.predict_test over folds x TTA views (fold 0's checkpoint copied)."""
    from comp.data.competition import load_competition
    from comp.experiment import Experiment, load_config
    from comp.pipeline import prepare
    from comp.predict.predict import predict_test
    from comp.train.loop import fit

    n_folds, views = (2, ["identity", "hflip"]) if quick else (5, ["identity", "hflip"])
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        over = [f"data.root={work / 'demo'}", f"out_dir={tmp}", "epochs=1", f"aug.tta=[{','.join(views)}]",
                "train.recovery_every=0", f"predict.folds=[{','.join(map(str, range(n_folds)))}]",
                "train.tracker=none"] + (["num_workers=0", "image_size=16", "data.limit=10"] if quick else [])
        cfg = load_config(None, over)
        prepare(cfg)  # builds the demo competition under <work>/demo on first use
        exp = Experiment(cfg)
        first = fit(cfg, 0)["files"]
        row = pd.read_csv(first.metrics).iloc[-1]
        for k in range(1, n_folds):  # the other folds: fold 0's weights, same cost to predict with
            exp.run(k).dir.mkdir(exist_ok=True)
            shutil.copy(first.best, exp.run(k).best)
        comp = load_competition(cfg)
        secs = []
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            predict_test(cfg, comp)
            secs.append(time.perf_counter() - t0)
    s, n_test = statistics.median(secs), len(comp.test)
    res = {"e2e_epoch_seconds": float(row["seconds"]), "e2e_images_per_s": float(row["images_per_s"]),
           "e2e_data_wait_share": float(row["data_wait_share"]), "predict_seconds": s,
           "predict_images_per_s": n_test / s, "predict_forward_images_per_s": n_test * n_folds * len(views) / s}
    wait = res["e2e_epoch_seconds"] * res["e2e_data_wait_share"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    echo(f"3. End to end: demo fold 0, {cfg.model.name}, {cfg.image_size} px, batch {cfg.batch_size}, "
         f"num_workers={cfg.num_workers}, {device}")
    echo(f"   one training epoch                 {res['e2e_epoch_seconds']:8.2f} s  "
         f"({res['e2e_images_per_s']:.0f} img/s)")
    echo(f"     waiting for data                 {wait:8.2f} s  ({100 * res['e2e_data_wait_share']:.1f} %)")
    echo(f"     compute                          {res['e2e_epoch_seconds'] - wait:8.2f} s")
    echo(f"   predict {n_test} test images x {n_folds} folds x {len(views)} TTA views: {s:.2f} s = "
         f"{res['predict_images_per_s']:.0f} test images/s ({res['predict_forward_images_per_s']:.0f} forward img/s)")
    return res


# --------------------------------------------------------------------------------------------- 4. GPU


GPU_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def _mode_key(mode: bool | str) -> str:
    """How a train.compile value names its rows: eager, compile (torch.compile's default), compile_<mode>."""
    return "eager" if mode is False else "compile" if mode in (True, "default") else f"compile_{mode}"


def bench_gpu(work: Path, quick: bool, echo: Callable[[str], None], device: str = "cuda",
              compile_modes: tuple[str, ...] = GPU_COMPILE_MODES, images: int | None = None) -> dict[str, Any]:
    """ResNet50, 224 px, bf16, channels_last on the GPU: comp.train.fit from the cache, eager and in each
    train.compile mode of `compile_modes` (epochs after the first: no compilation, no cache filling), against
    compute only (the same modes) and a timm loop (eager, and torch.compile's default mode when measured).
    `images`: the set's size (a multiple of 64; default 16,384). `device` is "cuda" but for checking this
    code path on a CPU."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        echo("4. GPU: skipped, no CUDA device (torch.cuda.is_available() is False)")
        return {"skipped": "no CUDA device"}
    from comp.pipeline import prepare
    from comp.train.loop import fit

    # 16,384 images: 51 steps of 256 per training epoch (4 folds of 5), so an epoch's start (the prefetch
    # queue filling) weighs as in a real fold; APTOS 2019's ~2,900 training images per fold would be 11 steps.
    batch, copies, epochs = (64, 8, 2) if quick else (256, 256, 3)
    copies = max(1, images // 64) if images else copies
    workers = max(1, min(16, (os.cpu_count() or 2) - 1))
    root = fundus_set(work, 64, 512, 512, copies=copies, classes=5)
    res: dict[str, Any] = {"batch": batch, "workers": workers, "images": 64 * copies}
    modes: list[bool | str] = [False] if quick else [False, *compile_modes]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for mode in modes:
            key = _mode_key(mode)
            torch.compiler.reset()
            cfg = fundus_config(root, Path(tmp) / key, "model.name=resnet50", "folds.n_folds=5",
                                f"batch_size={batch}", f"num_workers={workers}", f"epochs={epochs}", f"device={device}",
                                "train.amp=true", "train.channels_last=true", f"train.compile={str(mode).lower()}")
            prepare(cfg)
            rows = pd.read_csv(fit(cfg, 0)["files"].metrics).iloc[1:]  # epoch 0: compile, cache fill
            res[f"kit_{key}"] = {"images_per_s": float(rows["images_per_s"].median()),
                                 "data_wait_share": float(rows["data_wait_share"].median())}
            res[f"ceiling_{key}"] = compute_only(batch, 3 if quick else 40, mode, device=device)
        for mode in [m for m in modes if m in (False, "default")]:
            res[f"timm_{_mode_key(mode)}"] = timm_loop(root / "train", batch, workers, epochs, mode, device=device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    echo(f"4. GPU ({name}): ResNet50, {SIZE} px, batch {batch}, bf16, channels_last, "
         f"{workers} workers, {res['images']} images (64 distinct 512 px JPEGs)")
    labels = {}
    for mode in modes:
        key, how = _mode_key(mode), "eager" if mode is False else f"train.compile={mode}"
        labels[f"ceiling_{key}"] = f"compute only: one batch resident on the GPU, no loader, {how}"
    for mode in modes:
        key, how = _mode_key(mode), "eager" if mode is False else f"train.compile={mode}"
        labels[f"kit_{key}"] = f"kit: comp.train.fit from the cache, {how}"
    labels.update({"timm_eager": "timm: ImageDataset + create_loader (JPEG decode) + timm resnet50, eager",
                   "timm_compile": "timm: same, torch.compile"})
    echo(f"   {'':<76}{'img/s':>9}{'of compute-only':>17}{'loop data wait':>16}")
    for key, label in labels.items():
        if key in res:
            r = res[key]
            r["share_of_compute_only"] = r["images_per_s"] / res[f"ceiling_{key.split('_', 1)[1]}"]["images_per_s"]
            wait = f"{100 * r['data_wait_share']:15.1f}%" if "data_wait_share" in r else ""
            echo(f"   {label:<76}{r['images_per_s']:>9.0f}{100 * r['share_of_compute_only']:>16.1f}%{wait}")
    res["gpu_images_per_s"] = res["kit_eager"]["images_per_s"]
    res["gpu_compile_images_per_s"] = res.get("kit_compile", res["kit_eager"])["images_per_s"]
    res["gpu_compile_modes_images_per_s"] = {str(m): res[f"kit_{_mode_key(m)}"]["images_per_s"] for m in modes}
    res["gpu_data_wait_share"] = res["kit_eager"]["data_wait_share"]
    res["gpu_share_of_compute_only"] = res["kit_eager"]["share_of_compute_only"]
    res["gpu_ratio_vs_timm"] = res["kit_eager"]["images_per_s"] / res["timm_eager"]["images_per_s"]
    return res


# ----------------------------------------------------------------------------------------------- all


def run(sections: list[str] | tuple[str, ...] = SECTIONS, quick: bool = False, work: Path | None = None,
        echo: Callable[[str], None] = print, command: str = "", options: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Run `sections` in order, `echo` each table as it is done, return every number in one dict.

    Args:
        sections: names from SECTIONS.
        quick: a smoke run (seconds a section on 2 CPU cores; tests/benchmarks/test_bench_run.py): the code paths of
            the full run on the fewest images, rounds and models that take them; its numbers mean nothing.
        work: where generated images and the demo data are kept between runs (default: a folder in the
            system temp dir); every run's outputs go to a temporary folder inside it, removed after.
        command: the command line, printed in the header and kept in the result.
        options: sizes of the issue-17 sections (benchmarks/run.py's flags): `compile_modes` (gpu and
            predict: train.compile / predict.compile values), `gpu_images`, `recipes` (config names), `recipe_steps`,
            `predict_images`, `predict_models`; a key left out takes the section's default.
    """
    opt = {k: v for k, v in (options or {}).items() if v is not None}
    work = Path(work) if work else Path(tempfile.gettempdir()) / "comp-bench"
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    echo(f"comp benchmark {time.strftime('%Y-%m-%d %H:%M %Z')}: {command or f'sections {list(sections)}'}")
    echo(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']} "
         f"({info['torch_threads']} threads), GPU: {info['gpu'] or 'none'}")
    out: dict[str, Any] = {"machine": info, "command": command, "date": time.strftime("%Y-%m-%d"), "quick": quick,
                           "sections": {}}
    modes = tuple(opt["compile_modes"]) if "compile_modes" in opt else None
    gpu_kw = {**({"compile_modes": modes} if modes is not None else {}), "images": opt.get("gpu_images")}
    fns = {"loader": lambda: bench_loader(work, quick, echo), "model": lambda: bench_model(quick, echo),
           "e2e": lambda: bench_e2e(work, quick, echo), "gpu": lambda: bench_gpu(work, quick, echo, **gpu_kw),
           "recipes": lambda: bench_recipes(work, quick, echo, names=opt.get("recipes"), steps=opt.get("recipe_steps")),
           "predict": lambda: bench_predict(work, quick, echo, n_images=opt.get("predict_images"),
                                            models=tuple(opt.get("predict_models") or ()) or None,
                                            compile_modes=modes),
           "mil": lambda: bench_mil(work, quick, echo)}
    for name in sections:
        echo("")
        t0 = time.perf_counter()
        res = fns[name]()
        res["wall_seconds"] = time.perf_counter() - t0
        out["sections"][name] = res
        out.update({k: v for k, v in res.items() if isinstance(v, float) and k != "wall_seconds"})  # headlines
    return out
