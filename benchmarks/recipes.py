"""Section `recipes` of the benchmarks (issue 17): every shipped config's training recipe, the kit's loop
against timm's loop written out (benchmarks.common.timm_loop) and against compute only
(benchmarks.common.compute_only), on generated images of its competition's kind.

What a recipe is: the config file itself (configs/<name>.yaml, loaded by comp.config), with its model
(`model.name`, `in_chans`, `drop_rate`), `image_size`, `batch_size`, `train.accum_steps`, the `aug.train`
albumentations pipeline, `train.ema`, `train.amp`, `train.channels_last`, the optimizer and the task's head
and loss; only its data settings are pointed at a generated set in the Kaggle CSV layout (JPEGs of the
competition's kind, labels of its task) and `model.pretrained` is dropped (no download; the weights' values
cost nothing). `--quick` (or a CPU) shrinks the images and batch, never the model or the pipeline.

Per recipe: images/s of the kit's training loop (comp.train.build.build_run, then
comp.train.loop.train_one_epoch: the steps, EMA and loss read-backs fit runs; no validation or checkpoints),
of timm's loop (timm's ImageDataset + create_loader, RandomResizedCrop and flips in the workers, the same
model from timm, ModelEmaV3 when the recipe keeps an EMA), of compute only (one batch resident on the
device), the kit's share of compute only, and the peak GPU memory of each side (none on a CPU).
"""

from __future__ import annotations

import gc
import json
import os
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

from benchmarks.common import compute_only, fundus_image, timm_loop
from comp.config import REPO_ROOT
from comp.experiment import load_config
from comp.pipeline import prepare

KINDS = {"aptos2019": "fundus", "dr2015": "fundus", "chest_xray": "xray", "rsna_pneumonia": "xray",
         "ranzcr_clip": "xray", "rsna_bone_age": "xray", "cnmc2019": "cells", "ham10000": "skin",
         "isic2020": "skin", "demo": "digits", "demo_b": "digits", "demo_ssl": "digits"}

MIN_SIZE = {"inception_v3": 80}  # the smallest input its stem takes (torchvision's documented minimum is 75)


def kind_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 BGR image of a competition's kind: `fundus` (benchmarks.common.fundus_image),
    `xray` (grey radiograph: a bright body on black, spine and ribs, noise), `skin` (a dermoscopy-like
    brown lesion on skin with hairs), `cells` (a stained lymphocyte on black, as C-NMC's segmented cells),
    `digits` (the demo's white digit on black)."""
    if kind == "fundus":
        return fundus_image(size, size, rng)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    noise = rng.normal(0, 6, (size, size)).astype(np.float32)
    if kind == "xray":
        body = np.clip(1.4 - 3.5 * ((xx - 0.5) ** 2 / 0.5 + (yy - 0.55) ** 2 / 0.7), 0, 1) * 150
        body += 60 * np.exp(-((xx - 0.5) / 0.04) ** 2)  # the spine
        for k in range(8):  # ribs: bright arcs either side
            body += 25 * np.exp(-((yy - 0.25 - 0.07 * k - 0.15 * (xx - 0.5) ** 2) / 0.01) ** 2) * (abs(xx - 0.5) > 0.06)
        g = np.clip(body + noise + 10, 0, 255).astype(np.uint8)
        return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    if kind == "skin":
        img = np.stack([150 + 20 * yy, 170 + 15 * xx, 215 - 10 * yy], -1) + noise[..., None]
        r = (((xx - 0.5) / rng.uniform(0.15, 0.3)) ** 2 + ((yy - 0.5) / rng.uniform(0.15, 0.3)) ** 2) ** 0.5
        lesion = np.clip(1.3 - r + 0.15 * rng.standard_normal((size, size)), 0, 1)[..., None]
        img = img * (1 - lesion) + np.array([40, 60, 100], np.float32) * lesion
        img = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(6):  # hairs
            p = (rng.integers(0, size, 2), rng.integers(0, size, 2))
            cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), (30, 30, 40), max(1, size // 200))
        return img
    if kind == "cells":
        r = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) ** 0.5
        cell = (r < rng.uniform(0.3, 0.42)).astype(np.float32)[..., None]
        nucleus = (r < rng.uniform(0.2, 0.28)).astype(np.float32)[..., None]
        img = cell * np.array([190, 120, 170], np.float32) - nucleus * np.array([80, 70, 30], np.float32)
        return np.clip(img + cell * noise[..., None], 0, 255).astype(np.uint8)
    img = np.zeros((size, size, 3), np.uint8)  # digits
    cv2.putText(img, str(int(rng.integers(0, 10))), (size // 5, 4 * size // 5), cv2.FONT_HERSHEY_SIMPLEX,
                size / 30, (255, 255, 255), max(1, size // 12))
    return img


def recipe_set(work: Path, name: str, cfg: Any, n: int, size: int) -> Path:
    """A competition folder (train.csv, train/<id>.jpg) of `n` images of `name`'s kind at `size` px (at most
    64 distinct, hard-linked to n ids), labelled for the config's task: its classes, its label columns
    (multi-label, random 0/1), or values (regression). Written once under `work` and reused."""
    root = work / f"recipe_{name}_{size}px_n{n}"
    if (root / "train.csv").is_file():
        return root
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=work))
    (tmp / "train").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"{root.name}_{i:05d}" for i in range(n)]
    for i, id_ in enumerate(ids):
        first = tmp / "train" / f"{ids[i % 64]}.jpg"
        if i < 64:
            cv2.imwrite(str(first), kind_image(KINDS.get(name, "fundus"), size, rng), [cv2.IMWRITE_JPEG_QUALITY, 95])
        else:
            os.link(first, tmp / "train" / f"{id_}.jpg")
    table = pd.DataFrame({"id": ids})
    if cfg.task == "multilabel":
        for col in cfg.data.label_columns:
            table[col] = rng.integers(0, 2, n)
    elif cfg.task == "regression":
        table["label"] = rng.uniform(0, 200, n).round(1)
    else:
        classes = list(cfg.data.classes) or [str(k) for k in range(2)]
        table["label"] = [classes[i % len(classes)] for i in range(n)]
    table.to_csv(tmp / "train.csv", index=False)
    try:
        os.rename(tmp, root)
    except OSError:  # another run made it meanwhile
        pass
    return root


def recipe_config(path: Path, root: Path, out: Path, *overrides: str) -> Any:
    """The config at `path` with its data settings pointed at `root` (a `recipe_set`), its recipe intact;
    `overrides` on top. (Each section's settings go in as one override: comp.config merges overrides one
    by one, ~15 ms each.)"""
    data = {"root": str(root), "source": "competition", "layout": "csv", "train_csv": "train.csv", "test_csv": "",
            "sample_submission": "", "solution_csv": "", "id_column": "id", "test_id_column": "",
            "label_column": "label", "group_column": "", "group_pattern": "", "class_values": [], "positive_class": "",
            "submission_id_column": "", "submission_id_parts": [], "train_images": ["train"], "test_images": ["test"],
            "image_ext": ".jpg", "dedupe_ids": False, "extra": [], "extra_only": False, "exclude": [], "pseudo": "",
            "limit": 0, "demo_external": 0.0, "download": False}
    images = {"preprocess": [], "cache": True, "cache_format": "npy", "dicom_windows": []}
    train = {"recovery_every": 0, "tracker": "none", "early_stop": 0, "swa_epochs": 0}
    return load_config(path, [f"data={json.dumps(data)}", f"images={json.dumps(images)}", f"train={json.dumps(train)}",
                              "model.pretrained=null", "stages=[]", "seeds=[]", "distill.teacher=''",
                              "folds.n_folds=2", f"out_dir={out}", *overrides])


def _kit_loop(cfg: Any, epochs: int, steps: int) -> dict[str, Any]:
    """The kit's training loop over fold 0 for `epochs` epochs of at most `steps` optimizer steps (build_run,
    then train_one_epoch as fit calls it); images/s and data wait share: medians of the epochs after the
    first (all of one); `model`: the trained module, for compute only to reuse."""
    from comp.train.build import build_run
    from comp.train.loop import train_one_epoch
    from comp.train.state import fresh_partial

    run = build_run(cfg, 0, resume=False)
    run.steps_per_epoch = min(run.steps_per_epoch, steps)  # as timm's side: the same number of steps
    rows = []
    for epoch in range(epochs):
        rows.append(train_one_epoch(run, epoch))
        run.state.update(partial=fresh_partial())
    run.data.train_loader = run.data.valid_loader = run.next_epoch = None  # persistent workers exit now
    later = rows[1:] or rows
    return {"images_per_s": statistics.median(r["images_per_s"] for r in later),
            "data_wait_share": statistics.median(r["data_wait_share"] for r in later), "model": run.raw}


def _peak(on: str, fn: Callable[..., dict[str, float]], /, *args: Any, **kwargs: Any) -> dict[str, float]:
    """fn(*args, **kwargs)'s numbers, with the peak memory of device `on` in GiB (None on a CPU)."""
    cuda = on.startswith("cuda")
    if cuda:
        gc.collect()  # the previous side's objects (a Run holds reference cycles) before its memory is freed
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(on)
    res = fn(*args, **kwargs)
    res["peak_gib"] = torch.cuda.max_memory_allocated(on) / 2 ** 30 if cuda else None
    return res


def bench_recipes(work: Path, quick: bool, echo: Callable[[str], None], names: list[str] | None = None,
                  steps: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Each config of `names` (default every configs/*.yaml): the kit's loop, timm's loop and compute only
    with its recipe. On a GPU: the config's image size and batch, `steps` optimizer steps an epoch (default
    20), 2 epochs (the second timed); on a CPU or with `quick`: at most 32 px (a model's minimum input
    size if larger), batch 2 without accumulation, one step of one epoch."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    small = quick or not cuda
    steps = steps or (1 if small else 20)
    epochs = 1 if small else 2
    workers = 0 if small else max(1, min(16, (os.cpu_count() or 2) - 1))
    names = names or sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml"))
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for name in names:
            path = REPO_ROOT / "configs" / f"{name}.yaml"
            base = recipe_config(path, work, Path(tmp) / name)
            model = base.model.name.removeprefix("timm/")
            size, batch = base.image_size, base.batch_size
            if small:
                size, batch = max(min(size, 32), MIN_SIZE.get(model, 0)), 2
            accum = 1 if small else base.train.accum_steps  # shrunk: one micro-batch a step
            n_cls = len(base.data.label_columns) or len(base.data.classes) or 2
            n = max(2 * batch * accum * steps, 4 * n_cls)  # 2 folds: half of it trains
            root = recipe_set(work, name, base, n, size)
            over = [f"image_size={size}", f"batch_size={batch}", f"train.accum_steps={accum}", f"epochs={epochs}",
                    f"num_workers={workers}", f"device={device}"]
            cfg = recipe_config(path, root, Path(tmp) / name, *over)
            t0 = time.perf_counter()
            prepare(cfg)  # the image cache the kit trains from (timm reads the JPEGs)
            kit = _peak(device, _kit_loop, cfg, epochs, steps)
            net = kit.pop("model")
            amp = bool(cfg.train.amp) and cuda
            num_logits = n_cls if cfg.task != "regression" else 1
            loop = dict(model=cfg.model.name, size=size, in_chans=cfg.model.in_chans, num_classes=num_logits,
                        ema=cfg.train.ema, amp=amp, accum=accum, drop_rate=cfg.model.drop_rate)
            ceiling = _peak(device, compute_only, batch, steps, False, device=device, net=net,
                            warmup=0 if quick else None, **loop)
            del net  # before timm's side: its peak memory is its own
            tim = _peak(device, timm_loop, root / "train", batch, workers, epochs, False, device=device, steps=steps,
                        **loop)
            rows[name] = {"model": cfg.model.name, "size": size, "batch": batch, "accum": accum, "ema": cfg.train.ema,
                          "amp": amp, "kind": KINDS.get(name, "fundus"), "kit": kit, "timm": tim,
                          "compute_only": ceiling, "kit_share_of_compute_only": kit["images_per_s"]
                          / ceiling["images_per_s"], "kit_ratio_vs_timm": kit["images_per_s"] / tim["images_per_s"],
                          "aug_train": json.loads(json.dumps(_plain(cfg.aug.train))),
                          "seconds": time.perf_counter() - t0}
    _table(rows, device, small, steps, echo)
    return {"rows": rows, "recipes_worst_share_of_compute_only": min(r["kit_share_of_compute_only"]
                                                                      for r in rows.values()),
            "recipes_worst_ratio_vs_timm": min(r["kit_ratio_vs_timm"] for r in rows.values())}


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def _table(rows: dict[str, Any], device: str, small: bool, steps: int, echo: Callable[[str], None]) -> None:
    gib = (lambda v: f"{v:7.2f}") if device.startswith("cuda") else (lambda v: "    n/a")
    shrunk = " (shrunk: <= 32 px, batch 2, no accumulation)" if small else ""
    echo(f"5. Recipes: each config's model, size, batch x accum, aug.train, EMA, AMP on generated images of its "
         f"kind, {device}, {steps} step(s) an epoch{shrunk}")
    echo(f"   {'config':<15}{'model':<28}{'px':>5}{'batch':>8}{'EMA':>5}{'kit img/s':>11}{'timm img/s':>12}"
         f"{'compute-only':>14}{'kit share':>11}{'kit/timm':>10}{'peak GiB kit/timm':>19}")
    for name, r in rows.items():
        echo(f"   {name:<15}{r['model'][:27]:<28}{r['size']:>5}{r['batch']:>5}x{r['accum']:<2}"
             f"{'yes' if r['ema'] else 'no':>5}{r['kit']['images_per_s']:>11.1f}{r['timm']['images_per_s']:>12.1f}"
             f"{r['compute_only']['images_per_s']:>14.1f}{100 * r['kit_share_of_compute_only']:>10.1f}%"
             f"{r['kit_ratio_vs_timm']:>10.2f}{gib(r['kit']['peak_gib'])} /{gib(r['timm']['peak_gib'])}")
