"""The kit's benchmarks (BENCHMARKS.md): its input pipeline against the lab reports' PIL + torchvision loader
and timm's, its ResNets against timm's, one demo fold end to end, and a ResNet50 training step on a GPU.

`run(sections, quick)` prints each section's table as it finishes and returns one dict: the machine, each
section's numbers, and the headline ratios as top-level keys (`loader_speedup_vs_seed`,
`cache_speedup_vs_seed`, `resnet_step_ratio_vs_timm`, ...). Compared sides run interleaved round after
round, the first side rotated, and a ratio is the median of the per-round ratios: a slow spell of a shared
machine then hits both sides of a ratio alike (benchmarks.models interleaves the model step likewise).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from comp.device import compile_model
from comp.system import usable_cpus

SECTIONS = ("loader", "model", "e2e", "gpu", "recipes", "predict")
FLIPS = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]
SIZE = 224  # the training size of every loader in section 1 and of the GPU step


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and threads, GPU name (None without CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = usable_cpus()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": gpu}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each fn over `rounds`; within a round every fn runs once, the first one
    rotated from round to round. `warmup` untimed calls each first (page cache, allocator, lazy caches)."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    secs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            t0 = time.perf_counter()
            fns[name]()
            secs[name].append(time.perf_counter() - t0)
    return secs


def median_ratio(fast: list[float], slow: list[float]) -> float:
    """Median over rounds of slow/fast seconds: how many times faster `fast` is, noise of a round cancelled."""
    return statistics.median(s / f for f, s in zip(fast, slow, strict=True))


# ---------------------------------------------------------------------------------------------- data


def fundus_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 BGR fundus-like photograph: black surround, an orange-red disc darkening towards
    its rim, a bright optic disc, dark vessels branching from it, sensor noise. Saved as JPEG quality 95 it
    takes 0.2 bytes/pixel at 512 px and 0.13 at 3000x2000, as skimage.data.retina() (a real fundus
    photograph) does (0.23 and 0.15): JPEG decode time depends on that entropy, so it must be realistic."""
    s = 4 if min(h, w) >= 1024 else 1  # the smooth parts at 1/4 scale, then upsampled: 4x faster to make
    hs, ws = h // s, w // s
    yy, xx = np.ogrid[:hs, :ws]
    cy, cx = hs / 2 * rng.uniform(0.97, 1.03), ws / 2 * rng.uniform(0.97, 1.03)
    r = 0.46 * min(hs, ws) * rng.uniform(0.95, 1.05)
    d2 = (((yy - cy) / r) ** 2 + ((xx - cx) / r) ** 2).astype(np.float32)  # (hs, ws), 1 on the rim
    img = np.clip(1 - 0.6 * d2, 0, 1)[:, :, None] * (np.array([30, 90, 200], np.float32) * rng.uniform(0.8, 1.2, 3))
    dy, dx = cy + rng.uniform(-0.1, 0.1) * r, cx + rng.choice([-1, 1]) * 0.45 * r
    disc = np.exp(-(((yy - dy) ** 2 + (xx - dx) ** 2) / (0.12 * r) ** 2)).astype(np.float32)
    img = np.clip(img + disc[:, :, None] * np.array([60, 110, 90], np.float32), 0, 255).astype(np.uint8)
    mask = (d2 <= 1).astype(np.uint8)
    if s > 1:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        r, dy, dx = r * s, dy * s, dx * s
    width = max(1, min(h, w) // 300)
    for _ in range(12):  # vessels: random walks out of the optic disc
        a, pts = rng.uniform(0, 2 * np.pi), [(dx, dy)]
        for _ in range(10):
            a += rng.normal(0, 0.3)
            pts.append((pts[-1][0] + np.cos(a) * r * 0.1, pts[-1][1] + np.sin(a) * r * 0.1))
        thick = width * int(rng.integers(1, 4))
        cv2.polylines(img, [np.array(pts, np.int32)], False, (20, 40, 110), thick, cv2.LINE_AA)
    noise = rng.integers(0, 7, (h, w, 3), dtype=np.uint8)
    img = cv2.subtract(cv2.add(img, noise), 3)
    return img * mask[:, :, None] + (noise >> 1) * (1 - mask[:, :, None])


def fundus_set(work: Path, n: int, width: int, height: int, copies: int = 1, classes: int = 2) -> Path:
    """A competition folder in the Kaggle CSV layout (train.csv, train/<id>.jpg) of `n` generated fundus
    JPEGs, each hard-linked `copies` times (more ids, the same n distinct images). Written once under
    `work` and reused; ids carry the set's name so the kit's cache never confuses two sets."""
    name = f"fundus_{width}x{height}_n{n}_x{copies}"
    root = work / name
    if (root / "train.csv").is_file():
        return root
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=work))
    (tmp / "train").mkdir()
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        first = tmp / "train" / f"{name}_{i:04d}_0.jpg"
        cv2.imwrite(str(first), fundus_image(height, width, rng), [cv2.IMWRITE_JPEG_QUALITY, 95])
        for c in range(copies):
            if c:
                os.link(first, first.with_name(f"{name}_{i:04d}_{c}.jpg"))
            ids.append(f"{name}_{i:04d}_{c}")
    pd.DataFrame({"id": ids, "label": [k % classes for k in range(len(ids))]}).to_csv(tmp / "train.csv", index=False)
    try:
        os.rename(tmp, root)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def fundus_config(root: Path, out: Path, *overrides: str) -> Any:
    """The kit's config for a `fundus_set`: 224 px, flips, cache on; `overrides` on top."""
    from comp.config import load_config

    flips = ", ".join(f"{{name: {f['name']}, p: {f['p']}}}" for f in FLIPS)
    return load_config(None, [
        f"data.root={root}", "data.source=competition", "data.image_ext=.jpg", "data.sample_submission=''",
        "data.solution_csv=''", f"out_dir={out}", f"image_size={SIZE}", "images.cache=true", "folds.n_folds=2",
        f"aug.train=[{flips}]", "aug.valid=[]", "aug.tta=[identity]", "train.recovery_every=0", *overrides])


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
    from comp.data.prepare import prepare

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
    shapes = {"512x512": (512, 512, 16 if quick else 64), "3000x2000": (3000, 2000, 4 if quick else 32)}
    rounds = 3 if quick else 7
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: ToTensor/Normalize on one thread, as in one DataLoader worker
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
    from benchmarks.models import bench_model_step

    cuda = torch.cuda.is_available()
    if quick:
        kw = dict(names=("resnet18", "resnet50"), batch=8, size=32, steps=1, rounds=3, warmup=1)
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
    from comp.config import load_config
    from comp.data.competition import load_competition
    from comp.data.prepare import prepare
    from comp.predict.predict import predict_test
    from comp.train.loop import fit

    n_folds, views = (2, ["identity", "hflip"]) if quick else (5, ["identity", "hflip"])
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        over = [f"data.root={work / 'demo'}", f"out_dir={tmp}", "epochs=1", f"aug.tta=[{','.join(views)}]",
                "train.recovery_every=0", f"predict.folds=[{','.join(map(str, range(n_folds)))}]",
                "train.tracker=none"] + (["num_workers=0", "image_size=16"] if quick else [])
        cfg = load_config(None, over)
        prepare(cfg)  # builds the demo competition under <work>/demo on first use
        fold_dir = Path(fit(cfg, 0)["dir"])
        row = pd.read_csv(fold_dir / "metrics.csv").iloc[-1]
        for k in range(1, n_folds):  # the other folds: fold 0's weights, same cost to predict with
            (fold_dir.parent / f"fold{k}").mkdir(exist_ok=True)
            shutil.copy(fold_dir / "best.pt", fold_dir.parent / f"fold{k}" / "best.pt")
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


def _timm_loop(folder: Path, batch: int, workers: int, epochs: int, compile_: bool | str,
               device: str = "cuda", model: str = "resnet50", size: int = SIZE, in_chans: int = 3,
               num_classes: int = 5, ema: bool = False, amp: bool = True, accum: int = 1, drop_rate: float = 0.0,
               steps: int | None = None) -> dict[str, float]:
    """What timm's train.py does per step (its script is not in the wheel): timm's ImageDataset and
    create_loader (PIL decode in persistent workers, RandomResizedCrop and flips, prefetcher normalising on
    the GPU), timm's `model` (a `timm/` prefix dropped) in channels_last, bf16 autocast (`amp`, on CUDA),
    AdamW, `accum` micro-batches per optimizer step (its --grad-accum-steps), ModelEmaV3 after each step
    with `ema` (its --model-ema), loss.item() every step (train.py's loss meter). Whole epochs (at most
    `steps` optimizer steps each), as comp.train.fit is measured: images/s and data wait share, medians of
    the epochs after the first."""
    import timm
    import timm.data
    from timm.utils import ModelEmaV3

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    ds = timm.data.ImageDataset(str(folder), input_img_mode="L" if in_chans == 1 else "RGB")
    grey = {"mean": (0.5,), "std": (0.5,)} if in_chans == 1 else {}
    loader = timm.data.create_loader(ds, input_size=(in_chans, size, size), batch_size=batch, is_training=True,
                                     hflip=0.5, vflip=0.5, color_jitter=None, num_workers=workers, pin_memory=True,
                                     device=dev, use_prefetcher=True, **grey)
    net = timm.create_model(model.removeprefix("timm/"), num_classes=num_classes, in_chans=in_chans,
                            drop_rate=drop_rate)
    net = net.to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    model_ema = ModelEmaV3(net, decay=0.999) if ema else None
    step_fn = compile_model(net, compile_)
    rows = []
    for _ in range(epochs):
        wait, n, t0, micro = 0.0, 0, time.perf_counter(), 0
        it = iter(loader)
        while steps is None or micro < steps * accum:
            tw = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - tw
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):  # as comp.train
                loss = torch.nn.functional.cross_entropy(step_fn(x.contiguous(memory_format=torch.channels_last)), y)
            (loss / accum).backward()
            micro += 1
            if micro % accum == 0:
                opt.step()
                opt.zero_grad(set_to_none=True)
                if model_ema is not None:
                    model_ema.update(net)
            loss.item()
            n += len(x)
        secs = time.perf_counter() - t0
        rows.append((n / secs, wait / secs))
    del it, loader  # shuts the persistent workers down now, not at exit
    later = rows[1:] or rows
    return {"images_per_s": statistics.median(r[0] for r in later),
            "data_wait_share": statistics.median(r[1] for r in later)}


def _compute_only(batch: int, steps: int, compile_: bool | str, device: str = "cuda", model: str = "resnet50",
                  size: int = SIZE, in_chans: int = 3, num_classes: int = 5, ema: bool = False, amp: bool = True,
                  accum: int = 1, drop_rate: float = 0.0, net: torch.nn.Module | None = None) -> dict[str, float]:
    """The ceiling of a training loop: the kit's `model` (comp.models.create_model: `resnet50`, `timm/<name>`)
    on one batch that stays on the device (bf16 autocast with `amp` on CUDA, channels_last, AdamW every
    `accum` micro-batches, ModelEmaV3 with `ema`, no host sync inside the timed steps), no loader. A loop's
    share of this speed is what its data path leaves of the GPU, whatever its own wait timer says. `net`:
    that model already built (the recipes section passes the one the kit's loop trained)."""
    from timm.utils import ModelEmaV3

    from benchmarks.models import time_steps
    from comp.models import create_model

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    net = net if net is not None else create_model(model, num_classes, in_chans=in_chans, drop_rate=drop_rate)
    net = net.to(dev, memory_format=torch.channels_last).train()
    num_classes = net.get_classifier().out_features  # a built net's head: a regression head has one output
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    model_ema = ModelEmaV3(net, decay=0.999) if ema else None
    step_fn = compile_model(net, compile_)
    x = torch.randn(batch, in_chans, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=dev)

    def step() -> None:
        for _ in range(accum):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(step_fn(x), y)
            (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if model_ema is not None:
            model_ema.update(net)

    time_steps(step, 1 if dev.type == "cpu" else 3, dev)  # compilation, cuDNN's algorithm search, the allocator
    return {"images_per_s": steps * batch * accum / time_steps(step, steps, dev)}


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
    from comp.data.prepare import prepare
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
            rows = pd.read_csv(Path(fit(cfg, 0)["dir"]) / "metrics.csv").iloc[1:]  # epoch 0: compile, cache fill
            res[f"kit_{key}"] = {"images_per_s": float(rows["images_per_s"].median()),
                                 "data_wait_share": float(rows["data_wait_share"].median())}
            res[f"ceiling_{key}"] = _compute_only(batch, 3 if quick else 40, mode, device=device)
        for mode in [m for m in modes if m in (False, "default")]:
            res[f"timm_{_mode_key(mode)}"] = _timm_loop(root / "train", batch, workers, epochs, mode, device=device)
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
        quick: a smoke run (well under a minute on 2 CPU cores): fewer images, rounds and models.
        work: where generated images and the demo data are kept between runs (default: a folder in the
            system temp dir); every run's outputs go to a temporary folder inside it, removed after.
        command: the command line, printed in the header and kept in the result.
        options: sizes of the issue-17 sections (benchmarks/run.py's flags): `compile_modes` (gpu and
            predict: train.compile / predict.compile values), `gpu_images`, `recipes` (config names), `recipe_steps`,
            `predict_images`, `predict_models`; a key left out takes the section's default.
    """
    from benchmarks.predict_scale import bench_predict
    from benchmarks.recipes import bench_recipes

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
                                            compile_modes=modes)}
    for name in sections:
        echo("")
        t0 = time.perf_counter()
        res = fns[name]()
        res["wall_seconds"] = time.perf_counter() - t0
        out["sections"][name] = res
        out.update({k: v for k, v in res.items() if isinstance(v, float) and k != "wall_seconds"})  # headlines
    return out
