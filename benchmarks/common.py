"""What the benchmark sections share (benchmarks.harness runs them): the machine's description, interleaved
timing and its median ratio, the generated fundus photographs and their competition folder and config, and
the two reference training loops a section compares the kit's with: timm's loop written out (`timm_loop`)
and compute only (`compute_only`). The sections import this module; it imports none of them.
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


def fold_checkpoint(cfg: Any, comp: Any, net: torch.nn.Module, fold: int) -> dict[str, Any]:
    """A fold checkpoint of `net` in the format training writes (weights, what the model sees and predicts:
    comp.experiment.model), for a benchmark that predicts and does not train; validation score 0.5."""
    from comp.config import config_hash
    from comp.experiment.model import inputs_of
    from comp.models import input_norm
    from comp.tasks import make_task

    norm = input_norm(net)
    return {"format_version": 1, "model": net.state_dict(), "ema": None, "config_hash": config_hash(cfg),
            "model_name": cfg.model.name, "num_classes": comp.num_classes, "in_chans": cfg.model.in_chans,
            "classes": list(comp.classes), "fold": fold, "metric": cfg.metric, "eval_weights": "model",
            "input_norm": [list(v) for v in norm], "inputs": inputs_of(cfg, norm),
            "task": make_task(cfg, comp.classes).meta(), "best": 0.5, "epoch": 1, "step": 0}


def fundus_config(root: Path, out: Path, *overrides: str) -> Any:
    """The kit's config for a `fundus_set`: 224 px, flips, cache on; `overrides` on top."""
    from comp.experiment import load_config

    flips = ", ".join(f"{{name: {f['name']}, p: {f['p']}}}" for f in FLIPS)
    return load_config(None, [
        f"data.root={root}", "data.source=competition", "data.image_ext=.jpg", "data.sample_submission=''",
        "data.solution_csv=''", f"out_dir={out}", f"image_size={SIZE}", "images.cache=true", "folds.n_folds=2",
        f"aug.train=[{flips}]", "aug.valid=[]", "aug.tta=[identity]", "train.recovery_every=0", *overrides])


# ------------------------------------------------------------------------ reference training loops


def timm_loop(folder: Path, batch: int, workers: int, epochs: int, compile_: bool | str,
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


def compute_only(batch: int, steps: int, compile_: bool | str, device: str = "cuda", model: str = "resnet50",
                  size: int = SIZE, in_chans: int = 3, num_classes: int = 5, ema: bool = False, amp: bool = True,
                  accum: int = 1, drop_rate: float = 0.0, net: torch.nn.Module | None = None,
                  warmup: int | None = None) -> dict[str, float]:
    """The ceiling of a training loop: the kit's `model` (comp.models.create_model: `resnet50`, `timm/<name>`)
    on one batch that stays on the device (bf16 autocast with `amp` on CUDA, channels_last, AdamW every
    `accum` micro-batches, ModelEmaV3 with `ema`, no host sync inside the timed steps), no loader. A loop's
    share of this speed is what its data path leaves of the GPU, whatever its own wait timer says. `net`:
    that model already built (the recipes section passes the one the kit's loop trained). `warmup`: untimed
    steps first (default 1 on a CPU, 3 on a GPU; 0 for a smoke run, whose numbers are not read)."""
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

    if warmup is None:
        warmup = 1 if dev.type == "cpu" else 3
    if warmup:
        time_steps(step, warmup, dev)  # compilation, cuDNN's algorithm search, the allocator
    return {"images_per_s": steps * batch * accum / time_steps(step, steps, dev)}
