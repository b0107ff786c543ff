"""The learning-rate range test: train a few hundred steps of one fold with the learning rate ramped
exponentially from `start` to `end`, record the smoothed loss, stop once it diverges, and suggest an
`optim.lr` (Smith 2015, "Cyclical Learning Rates for Training Neural Networks", arXiv:1506.01186, sec. 3.3;
fastai's `Learner.lr_find`, fastai/callback/schedule.py).

The run is the training's own (comp.train.build.build_run: model, data path, optimizer, AMP, mixup), built
with `out_dir=<out_dir>/lr_find` so nothing is written into a fold folder, the fold split reused from
`<out_dir>/folds.csv` when there is one. Each step sets every parameter group's learning rate to
`lr * group["lr_mult"]` (a backbone at model.backbone_lr_mult keeps its ratio), and trains the whole
model (model.freeze_epochs does not apply). Outputs: lr_find.csv (lr, loss, smoothed) and lr_find.png.
"""

from __future__ import annotations

import io as pyio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io
from comp.data.folds import SplitFiles
from comp.data.loader import device_batches
from comp.errors import UserError
from comp.experiment import Experiment
from comp.models import set_backbone_trainable
from comp.train.build import build_run
from comp.train.loop import _forward_loss, optimizer_step

BETA = 0.98  # smoothing of the recorded loss: fastai's Recorder (an exponential moving average, debiased)
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum (fastai's LRFinder)


@dataclass
class LRFind:
    """The recorded test and its suggestions."""

    lrs: np.ndarray  # (n,) the head's learning rate of each step taken
    losses: np.ndarray  # (n,) that step's training loss
    smoothed: np.ndarray  # (n,) the debiased exponential moving average of the losses (BETA)
    valley: float  # fastai's `valley` suggestion: the one printed as optim.lr
    steepest: float  # fastai's `steep`: the lr of the steepest descent of the smoothed loss
    diverged: bool  # stopped early because the smoothed loss passed DIVERGE x its minimum
    folder: Path  # where lr_find.csv and lr_find.png are


def ramp(start: float, end: float, steps: int) -> np.ndarray:
    """(steps,) learning rates from `start` to `end`, equal ratios between neighbours (fastai's exponential
    schedule `start * (end / start) ** (i / (steps - 1))`)."""
    return start * (end / start) ** (np.arange(steps) / max(steps - 1, 1))


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The learning rate where the loss falls fastest per unit of log(lr): the start of the steepest
    segment, as fastai's `steep` (fastai/callback/schedule.py). Needs >= 2 points."""
    grads = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(grads))])


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's `valley` rule (fastai/callback/schedule.py, `valley`, by Zachary Mueller): find the longest
    strictly decreasing subsequence of the losses (its length ending at each point by dynamic programming,
    O(n^2)); the valley runs from the point `length` steps before its end to its end, and the suggestion
    is the lr at start + int(third) + int(third / 2) of it, i.e. about half-way along the valley's second
    third, where the loss still falls but well before the bottom."""
    n = len(losses)
    run_len = [1] * n
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run_len[i] < run_len[j] + 1:
                run_len[i] = run_len[j] + 1
            if run_len[end] < run_len[i]:
                end = i
    start = end - run_len[end]
    third = (end - start) / 3
    return float(lrs[max(0, start + int(third) + int(third / 2))])


def suggest(lrs: np.ndarray, smoothed: np.ndarray, steps: int) -> tuple[float, float]:
    """(valley, steepest) over the recorded smoothed losses, the first tenth of the planned steps and the
    last 5 left out as fastai's `lr_find` does (its `[num_it // 10 : -5]`), NaNs cut off; the whole record
    when that leaves fewer than 3 points.

    Raises:
        UserError: fewer than 2 finite losses were recorded.
    """
    finite = np.isfinite(smoothed)
    n = int(np.argmin(finite)) if not finite.all() else len(smoothed)
    lrs, smoothed = lrs[:n], smoothed[:n]
    if n < 2:
        raise UserError(f"the LR finder recorded {n} finite loss(es); use more --steps or a smaller --start")
    lo, hi = steps // 10, n - 5
    if hi - lo >= 3:
        lrs, smoothed = lrs[lo:hi], smoothed[lo:hi]
    return valley(lrs, smoothed), steep(lrs, smoothed)


def plot(result: LRFind, path: Path) -> None:
    """Loss (raw, light; smoothed, dark) against learning rate on a log axis, the suggestions marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))  # no pyplot: no backend chosen, no figure kept (comp.report.plots.new_figure)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=1.6, label=f"smoothed (beta {BETA})")
    for name, lr, color in (("valley", result.valley, "C3"), ("steepest", result.steepest, "C2")):
        y = float(np.interp(np.log(lr), np.log(result.lrs), result.smoothed))
        ax.plot([lr], [y], "o", color=color, label=f"{name} {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if len(finite):
        raw = result.losses[np.isfinite(result.losses)]
        low = float(min(raw.min(), finite.min())) if len(raw) else float(finite.min())
        ax.set_ylim(low - 0.05 * abs(low), float(min(finite.max(), DIVERGE * finite.min()) * 1.05 + 1e-12))
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = pyio.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    io.write_bytes(path, buf.getvalue())


def copy_folds(src: SplitFiles, dst: SplitFiles) -> None:
    """Give a side run (the LR finder, a tuning trial, a distillation student) the experiment's split: `src`'s
    folds.json and then folds.csv (whose existence marks a finished split), when it has them and `dst` has
    none. Without them the side run makes its own, the same split from the same folds settings."""
    if not src.csv.is_file() or dst.csv.is_file():
        return
    for a, b in ((src.meta, dst.meta), (src.csv, dst.csv)):
        if a.is_file():
            io.write_bytes(b, a.read_bytes())


def lr_find(cfg: Any, fold: int = 0, steps: int = 200, start: float = 1e-7, end: float = 10.0) -> LRFind:
    """Run the range test on fold `fold`; write `<out_dir>/lr_find/lr_find.csv` and `lr_find.png`.

    Raises:
        UserError: bad `steps`/`start`/`end`, more than one process (torchrun), fewer than 2 finite losses,
            or anything build_run refuses (data, fold, settings).
    """
    if steps < 2 or not 0 < start < end:
        raise UserError(f"the LR finder needs --steps >= 2 and 0 < --start < --end (got {steps}, {start!r}, {end!r})")
    parent = Experiment(cfg)
    folder = parent.sub("lr_find")
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(cfg, {"out_dir": str(folder), "train": {"ema": False}})
    copy_folds(parent.split, Experiment(cfg).split)
    run = build_run(cfg, fold, resume=False)  # its fold folder stays empty: no checkpoint is ever saved
    if run.dist.world > 1:
        raise UserError("the LR finder runs in one process: start it with python, not torchrun")
    run.model.train()
    set_backbone_trainable(run.raw, True)
    planned = ramp(start, end, steps)
    lrs, losses, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    epoch = 0
    while len(lrs) < steps and not diverged:
        run.data.train_sampler.set_epoch(epoch)
        it = device_batches(iter(run.data.train_loader), run.device, cfg.model.in_chans, cfg.train.channels_last,
                            run.norm)
        try:
            for _ in range(run.steps_per_epoch):
                lr = float(planned[len(lrs)])
                for g in run.optimizer.param_groups:
                    g["lr"] = lr * g["lr_mult"]
                total = 0.0
                for _micro in range(cfg.train.accum_steps):
                    x, y, _n = next(it)
                    if run.mixup is not None:
                        x, y = run.mixup(x, y)
                    loss = _forward_loss(run, x, y)
                    run.scaler.scale(loss / cfg.train.accum_steps).backward()
                    total += loss.item() / cfg.train.accum_steps  # a sync every step: a short test, it is fine
                optimizer_step(run)
                avg = BETA * avg + (1 - BETA) * total
                smooth = avg / (1 - BETA ** (len(lrs) + 1))
                lrs.append(lr)
                losses.append(total)
                smoothed.append(smooth if math.isfinite(total) else math.nan)
                best = min(best, smooth) if math.isfinite(smooth) else best
                if not math.isfinite(smooth) or smooth > DIVERGE * best:
                    diverged = True
                    break
                if len(lrs) == steps:
                    break
        finally:
            it.close()
        epoch += 1
    run.data.train_loader = run.data.valid_loader = None  # their workers exit now
    lr_arr, loss_arr, smooth_arr = np.array(lrs), np.array(losses), np.array(smoothed)
    v, s = suggest(lr_arr, smooth_arr, steps)
    result = LRFind(lrs=lr_arr, losses=loss_arr, smoothed=smooth_arr, valley=v, steepest=s, diverged=diverged,
                    folder=folder)
    io.write_csv(folder / "lr_find.csv", pd.DataFrame({"lr": lr_arr, "loss": loss_arr, "smoothed": smooth_arr}))
    plot(result, folder / "lr_find.png")
    return result
