"""Section `predict` of the benchmarks (issue 17): test prediction at Kaggle scale through the kit's own path.

comp.predict.predict.predict_test (what scripts/predict.py and the offline package's infer.py call) over
N cached test images at 512 px (default 10,000: APTOS 2019's hidden test set is ~13,000), 5 folds x 4 TTA
views (identity, hflip, vflip, hvflip), every fold's model resident on the device, bf16 autocast on CUDA
(`train.amp`), channels_last, eager and with `predict.compile`; for the kit's `resnet50` and
`timm/efficientnet_b3` (APTOS 2019's model). The fold checkpoints are written as training writes them
(random weights: the values cost nothing), the images are fundus JPEGs (benchmarks.common.fundus_set),
hard-linked copies of 64 distinct ones, cached by comp.data.prepare.prepare as scripts/prepare.py does.

Each side runs once untimed on a few batches first (loader start, cuDNN autotuning, and with compile the
compilation of the full and the last partial batch's shapes: shown as `warm-up s`), then once over all N
images, timed whole: test images/s, forward passes/s (N x folds x views / s), seconds, peak device memory.
`--quick`: 24 images at 16 px (from 64 px sources) in one batch; on a CPU without `--quick`, 48 at 64 px;
eager only on a CPU.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.common import fold_checkpoint, fundus_set

MODELS = ("resnet50", "timm/efficientnet_b3")
VIEWS = ("identity", "hflip", "vflip", "hvflip")


def _experiment(work: Path, out: Path, n: int, size: int, model: str, n_folds: int, *overrides: str,
                source: int = 512):
    """The config overrides, competition and fold checkpoints of an experiment of `model` whose test set is
    `n` fundus JPEGs of `source` px (64 distinct), cached at `size` px. The folds' checkpoints are one file
    hard-linked: predict_test loads each fold's as its own, and random weights' values cost nothing."""
    from comp.data.competition import load_competition
    from comp.experiment import Experiment, load_config
    from comp.experiment import checkpoint as ckpt_io
    from comp.models import create_model
    from comp.pipeline import prepare

    copies = -(-n // 64)
    root = fundus_set(work, 64, source, source, copies=copies, classes=5)
    test_ids = pd.read_csv(root / "train.csv")["id"].head(n)
    if not (root / "test").exists():  # the same files serve as the test set (hard links: no disk)
        (root / "test").mkdir()
        for f in (root / "train").iterdir():
            os.link(f, root / "test" / f.name)
    sample = root / f"sample_{n}.csv"
    if not sample.is_file():
        pd.DataFrame({"id": test_ids, "label": 0}).to_csv(sample, index=False)
    train = root / "train_50.csv"  # a few training rows: prepare caches the training images too
    if not train.is_file():
        pd.read_csv(root / "train.csv").head(50).to_csv(train, index=False)
    over = [
        f"data.root={root}", "data.source=competition", "data.image_ext=.jpg", f"data.sample_submission={sample.name}",
        f"data.train_csv={train.name}",
        "data.solution_csv=''", f"out_dir={out}", f"image_size={size}", "images.cache=true", f"folds.n_folds={n_folds}",
        f"model.name={model}", "aug.valid=[]", f"aug.tta=[{','.join(VIEWS)}]", "train.amp=true",
        "train.channels_last=true", *overrides]
    cfg = load_config(None, over)
    prepare(cfg)  # the cache at `size` px, of the training images and the test ones
    comp = load_competition(cfg)
    torch.manual_seed(0)
    net = create_model(model, comp.num_classes)
    paths = [Experiment(cfg).run(k).best for k in range(n_folds)]
    ckpt_io.save(fold_checkpoint(cfg, comp, net, 0), paths[0])
    for path in paths[1:]:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(paths[0], path)
    return over, comp, paths


def bench_predict(work: Path, quick: bool, echo: Callable[[str], None], n_images: int | None = None,
                  models: tuple[str, ...] | None = None, compile_modes: tuple[Any, ...] | None = None,
                  device: str | None = None) -> dict[str, Any]:
    """predict_test over `n_images` (default 10,000 at 512 px; 48 at 64 px on a CPU; 24 at 16 px with
    `quick`) cached test images x 5 folds x 4 TTA
    views for each of `models` (default MODELS), eager and in each predict.compile value of `compile_modes`
    (default: `true` on CUDA; none on a CPU or with `quick`)."""
    from comp.experiment import load_config
    from comp.predict.predict import predict_test

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    models = models or MODELS
    # A CPU cannot run 10,000 images x 20 forward passes at 512 px within a benchmark run (ResNet-50: ~1
    # forward pass a second per core there): without a GPU the section predicts a small set at 64 px.
    n = n_images or (24 if quick else 10_000 if cuda else 48)
    size = 16 if quick else 512 if cuda else 64
    n_folds = 5
    batch = 32 if quick else 64  # quick: every test image in one batch, the fewest forward calls
    workers = 0 if quick or not cuda else max(1, min(16, (os.cpu_count() or 2) - 1))
    modes = [False, *(compile_modes if compile_modes is not None else ((True,) if cuda and not quick else ()))]
    rows = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for model in models:
            out = Path(tmp) / model.replace("/", "_")
            run = [f"batch_size={batch}", f"num_workers={workers}", f"device={device}"]
            over, comp, paths = _experiment(work, out, n, size, model, n_folds, *run, source=64 if quick else 512)
            warm_comp = dataclasses.replace(comp, test=comp.test.head(2 * batch + 1))  # full and partial batches
            for mode in modes:
                cfg_m = load_config(None, [*over, f"predict.compile={str(mode).lower()}"])
                torch.compiler.reset()
                t0 = time.perf_counter()
                if cuda or mode is not False:  # nothing to warm up on a CPU without compilation
                    predict_test(cfg_m, warm_comp, torch.device(device), paths)
                warm = time.perf_counter() - t0
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                probs = predict_test(cfg_m, comp, torch.device(device), paths)
                secs = time.perf_counter() - t0
                assert probs.shape == (n, comp.num_classes)
                rows.append({"model": model, "compile": mode, "images": n, "seconds": secs, "warmup_seconds": warm,
                             "images_per_s": n / secs, "forward_images_per_s": n * n_folds * len(VIEWS) / secs,
                             "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None})
    echo(f"6. Predict: comp.predict.predict_test, {n} cached test images at {size} px x {n_folds} folds x {len(VIEWS)} "
         f"TTA views, models resident, batch {batch}, {workers} workers, {device}"
         f"{', bf16' if cuda else ', fp32'}, channels_last")
    echo(f"   {'model':<24}{'predict.compile':<28}{'test img/s':>11}{'forward img/s':>15}{'seconds':>9}"
         f"{'warm-up s':>11}{'peak GiB':>10}")
    for r in rows:
        peak = f"{r['peak_gib']:10.2f}" if r["peak_gib"] is not None else f"{'n/a':>10}"
        echo(f"   {r['model']:<24}{str(r['compile']).lower():<28}{r['images_per_s']:>11.1f}"
             f"{r['forward_images_per_s']:>15.1f}{r['seconds']:>9.2f}{r['warmup_seconds']:>11.2f}{peak}")
    eager = [r for r in rows if r["compile"] is False]
    return {"rows": rows, "predict_scale_images_per_s": min(r["images_per_s"] for r in eager),
            "predict_scale_seconds": max(r["seconds"] for r in eager)}
