"""Training one fold: `fit(cfg, fold)` → `train_one_epoch` / `validate`, the whole loop in this file.

Per epoch: train (optimizer steps, the learning rate set before each from the position, a recovery
checkpoint every `train.recovery_every` steps) → validate → history row → `last.pt`, and `best.pt` +
`oof.csv` when the competition metric improves → early stop. A run resumes from the newest checkpoint in
its fold folder, mid-epoch included, and ends bit-identical to a run never interrupted (on CPU; see
comp.data.loader for how the data side does it). What is built before the loop is in comp.train.build,
what a checkpoint holds in comp.train.state.

Under torchrun every process runs this same loop on its share of each batch (DDP); losses, metrics and
stop requests are agreed across processes, and only rank 0 writes files (comp.train.distributed).

Folds in parallel, one per GPU, are independent single-GPU runs (scripts/train_fold.py's help):
    python scripts/prepare.py --config C     # writes folds.csv once, before the runs share it
    for k in 0 1 2 3 4; do CUDA_VISIBLE_DEVICES=$k python scripts/train_fold.py --config C --fold $k & done; wait
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from comp import io
from comp.data.loader import device_batches
from comp.errors import UserError
from comp.experiment import checkpoint as ckpt_io
from comp.experiment.oof import aggregate, write_oof
from comp.log import log, progress
from comp.metrics import higher_is_better, score_all
from comp.models import set_backbone_trainable
from comp.models.inference import forward_views
from comp.tasks import mix_matrix
from comp.train import swa
from comp.train.build import build_run
from comp.train.distributed import agree, check_ranks_agree, gather_rows, wrap_ddp
from comp.train.state import Run, best_checkpoint, fresh_partial, save, to_checkpoint
from comp.train.state import improved as _improved  # the best epoch, early stop and SWA ask it
from comp.train.tracking import start as start_tracking


class Stopped(Exception):
    """Raised after a SIGTERM/SIGINT once the recovery checkpoint is written."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {path}")
        self.signum, self.path = signum, path


def _forward_loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean training loss of one micro-batch under the task's loss (comp.tasks.Task.loss): targets as
    the dataset gives them, or mixed by mixup/cutmix (dense rows, label smoothing already in them)."""
    aux = run.cfg.mil.aux_weight if run.cfg.mil.source != "none" else 0.0
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits, inst = run.model(x, with_instances=True) if aux else (run.model(x), None)
    mixed = run.mixup is not None and run.task.head in ("softmax", "multihead")  # smoothing in the mixed rows already
    distill = getattr(run, "distill", None)
    if distill is not None:  # hard targets packed with the teacher's outputs (comp.teacher)
        loss = distill.loss(run.task, logits.float(), y, run.loss_weight, run.cfg.train.label_smoothing)
    else:
        loss = run.task.loss(logits.float(), y, run.loss_weight, 0.0 if mixed else run.cfg.train.label_smoothing)
    if inst is not None:  # mil.aux_weight: each instance's logits against its row's hard target (comp.models.mil)
        hard = distill.split(y)[0] if distill is not None else y
        loss = loss + aux * run.task.loss(inst.flatten(0, 1).float(), hard.repeat_interleave(inst.shape[1], 0),
                                          run.loss_weight, run.cfg.train.label_smoothing)
    return loss


def optimizer_step(run: Run) -> None:
    """One optimizer step from the accumulated gradients: clip them (train.clip_grad, after unscaling),
    step through the fp16 gradient scaler (a no-op scaler otherwise), zero them."""
    if run.cfg.train.clip_grad > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw.parameters(), run.cfg.train.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def train_one_epoch(run: Run, epoch: int) -> dict[str, float]:
    """Optimizer steps from `run.state['step']` to the end of the epoch; returns loss and throughput.

    The step losses stay on the device and are read back every `train.log_every` steps, before any
    checkpoint and at the epoch's end (`flush`), not after every step: a read is a host-device sync, and
    a synchronised host cannot queue the next step's copy and kernels while the GPU computes (timm's
    train.py reads its loss at log intervals too). A non-finite loss is still reported with its step, and
    no checkpoint is ever written after one. Stop requests (SIGTERM, Ctrl-C) act after the current step,
    or under DDP at the next flush, which every rank reaches at the same step.

    Raises:
        UserError: a non-finite loss (nothing is saved after it).
        Stopped: SIGTERM/SIGINT arrived; a recovery checkpoint of the step just taken is written first.
    """
    cfg, accum, part = run.cfg, run.cfg.train.accum_steps, run.state["partial"]
    start = run.state["step"]
    if run.next_epoch is not None and run.next_epoch[0] == epoch and start == 0:
        batches = run.next_epoch[1]  # its workers have been at it since the last epoch's end
    else:
        run.data.train_sampler.set_epoch(epoch, start=start * accum * cfg.batch_size)
        batches = iter(run.data.train_loader)
    run.next_epoch = None
    run.model.train()
    frozen = epoch < cfg.model.freeze_epochs
    set_backbone_trainable(run.raw, not frozen)  # after .train(): a frozen backbone's BN stays in eval mode
    if run.dist.world > 1 and run.wrapped_frozen != frozen:
        run.ddp = run.model = None  # the old wrapper is freed here, and its gradient hooks with it
        run.ddp, run.model = wrap_ddp(run.raw, run.device, cfg.train.compile, old=run.wrapped_frozen)
        run.wrapped_frozen = frozen
    bar = progress(run.steps_per_epoch, f"fold {run.fold} epoch {epoch}", initial=start, enabled=run.dist.main)
    pending: list[tuple[int, torch.Tensor, list[int]]] = []  # (step, its micro-step losses, their sizes)

    def flush() -> bool:
        """Read the pending losses back, fail on a non-finite one, add them up step by step (the same sums
        whatever the flush points, so a resumed run's metrics.csv matches too); True when any rank asks to
        stop. Collective under DDP: one all-reduce."""
        values = torch.stack([v for _, v, _ in pending]).cpu().double().tolist() if pending else []
        bad = next(((st, v) for (st, _, _), row in zip(pending, values, strict=True) for v in row
                    if not math.isfinite(v)), None)
        sums = [sum(v * k for v, k in zip(row, sizes, strict=True)) for (_, _, sizes), row in zip(pending, values,
                                                                                                  strict=True)]
        counts = [float(sum(sizes)) for _, _, sizes in pending]
        pending.clear()
        *g, g_bad, g_stop = agree(run.dist, run.device, *sums, *counts, float(bad is not None), float(run.stop_signal))
        if g_bad:
            where = f"{bad[1]} at epoch {epoch} step {bad[0]}" if bad else f"not finite at epoch {epoch}"
            raise UserError(f"loss is {where} (fold {run.fold}); training stopped, checkpoints in {run.dir} are "
                            f"intact; try a lower optim.lr or set train.clip_grad")
        for g_loss, g_count in zip(g[:len(sums)], g[len(sums):], strict=True):
            part["loss_sum"] += g_loss
            part["count"] += g_count
        if sums:  # the mean loss of the steps read back now, at the last of them
            run.tracker.log_step(run.global_step(), {"train/loss": sum(g[:len(sums)]) / max(sum(g[len(sums):]), 1),
                                                     "train/lr": run.lr})
        return bool(g_stop)

    t0 = time.perf_counter() - part["seconds"]  # the time before a resume counts too
    it = device_batches(batches, run.device, cfg.model.in_chans, cfg.train.channels_last, run.norm)
    try:
        for step in range(start, run.steps_per_epoch):
            losses, sizes = [], []
            for micro in range(accum):
                tw = time.perf_counter()
                x, y, n = next(it)
                part["wait"] += time.perf_counter() - tw
                if run.mixup is not None:
                    x, m = mix_matrix(run.mixup, x)
                    y = m @ run.task.dense(y, run.cfg.train.label_smoothing)
                loss = _forward_loss(run, x, y)
                # DDP all-reduces gradients on the last micro-step only
                sync = micro == accum - 1 or run.ddp is None
                with run.ddp.no_sync() if not sync else contextlib.nullcontext():
                    run.scaler.scale(loss / accum).backward()
                losses.append(loss.detach())
                sizes.append(n)
            optimizer_step(run)
            run.state["step"] = step + 1  # the position the next learning rate and a checkpoint are at
            run.set_lr()
            if run.ema is not None:
                run.ema.update(run.raw, step=run.global_step())
            pending.append((step, torch.stack(losses), sizes))
            bar.update(1)
            done, every = step + 1, cfg.train.recovery_every
            recover = every and run.global_step() % every == 0 and done < run.steps_per_epoch
            local_stop = run.dist.world == 1 and run.stop_signal  # one process: no need to agree, act now
            if step % cfg.train.log_every == 0 or recover or local_stop or done == run.steps_per_epoch:
                stop = flush()
                bar.set_postfix(loss=f"{part['loss_sum'] / max(part['count'], 1):.4f}",
                                lr=f"{run.lr:.2e}")
                if stop or recover:
                    part["seconds"] = time.perf_counter() - t0
                    save(run, to_checkpoint(run), run.files.recovery)
                if stop:
                    if run.dist.world > 1:
                        dist.barrier()  # rank 0 has written before any rank exits (torchrun stops the rest)
                    raise Stopped(run.stop_signal or signal.SIGTERM, run.files.recovery)
    finally:
        bar.close()  # on an error too: the error line then starts a line of its own
        it.close()
    seconds = time.perf_counter() - t0
    run.state.update(epoch=epoch + 1, step=0)  # the position: the next epoch's start (the lr is set for it)
    if epoch + 1 < cfg.epochs:
        # The next epoch's first batches are made while this one validates. A batch is one worker's job, so
        # an epoch otherwise starts with the GPU idle for the time one worker takes to load a whole batch:
        # ~0.5 s at 256 images, 13 % of a 3,300-image/s epoch of 13,000 images (H100, BENCHMARKS.md).
        # The order and augmentations depend on (seed, epoch, position) alone, so resuming is unchanged.
        run.data.train_sampler.set_epoch(epoch + 1)
        run.next_epoch = (epoch + 1, iter(run.data.train_loader))
    return {"train_loss": part["loss_sum"] / max(part["count"], 1), "seconds": seconds,
            "images_per_s": part["count"] / max(seconds, 1e-9), "data_wait_share": part["wait"] / max(seconds, 1e-9)}


def validate(run: Run, model: torch.nn.Module | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Loss and every metric of the task on the fold's validation images, with `model` (default: the EMA
    weights when kept, else the model's); returns them and the (N_valid, K) outputs
    (comp.tasks.Task.activate) in the fold's validation order (on every rank)."""
    if run.dist.world > 1:
        from timm.utils import distribute_bn

        # rank 0's BatchNorm statistics to every rank: the same model everywhere, the one rank 0 saves
        distribute_bn(run.raw, run.dist.world, reduce=False)
        if run.ema is not None:
            distribute_bn(run.ema.module, run.dist.world, reduce=False)
    if model is None:
        model = run.ema.module if run.ema is not None else run.raw
    cfg, data = run.cfg, run.data
    with progress(len(data.valid_loader), "validate", enabled=run.dist.main) as bar:
        batches = (x for x, _, _ in device_batches(data.valid_loader, run.device, cfg.model.in_chans,
                                                   cfg.train.channels_last, run.norm))
        (logits,) = forward_views([model], batches, amp_dtype=run.amp_dtype, on_batch=lambda: bar.update(1))
    logits = logits.numpy() if len(logits) else np.zeros((0, run.task.num_logits), np.float32)
    logits = gather_rows(run.dist, data.valid_index, logits, len(data.valid_set))
    y = data.valid_set.labels
    t_logits = torch.from_numpy(logits)
    out = run.task.activate(t_logits).numpy()
    loss = run.task.loss(t_logits, torch.from_numpy(y)).item()
    y_s, out_s = y, out
    if data.valid_rows is not None:  # scored at the submission's level: images aggregated into their rows
        _, y_s, out_s = aggregate(np.asarray(data.valid_rows), y, out, cfg.predict.aggregate, run.task.positive)
    return {"valid_loss": loss, **score_all(y_s, out_s, task=run.task, min_tpr=cfg.pauc_min_tpr)}, out


def _commit(run: Run, ckpt: dict[str, Any], best: dict[str, Any] | None, probs: np.ndarray) -> None:
    """Rank 0 writes an epoch's files: best.pt + oof.csv (when `best`, the checkpoint to predict from, is
    given), metrics.csv, then last.pt, the commit point: written after the files above, so a failed write of
    any of them (disk full) or a kill leaves the previous last.pt, and the resume redoes the epoch and them."""
    if not run.dist.main:
        return
    if best is not None:
        save(run, best, run.files.best)  # weights, EMA, metadata: no optimizer
        write_oof(run.files.oof, run.data.valid_ids, run.data.valid_set.labels, probs, run.task,
                  run.data.valid_rows)
    io.write_csv(run.files.metrics, pd.DataFrame(run.state["history"]))
    save(run, ckpt, run.files.last)
    run.files.recovery.unlink(missing_ok=True)  # older than last.pt now


def _swa_epoch(run: Run, metric: str) -> None:
    """Validate the average of the last epochs' weights (comp.train.swa) as a metrics.csv row of its own
    (`weights` = swa, `epoch` = the epochs trained), and save it as best.pt (its weights as the model's, no
    EMA) with its oof.csv when it beats the best epoch; last.pt records that it is done."""
    model = swa.recompute_bn(run)
    scores, probs = validate(run, model)
    score = scores[metric]
    before = run.state["best"]
    improved = _improved(score, before, higher_is_better(metric), scores["valid_loss"], run.state.get("best_loss"))
    run.state["history"].append({"epoch": run.state["epoch"], **scores, "weights": "swa",
                                 "swa_epochs": swa.count(run)})
    run.state.update(swa_done=True, best=score if improved else run.state["best"],
                     best_loss=scores["valid_loss"] if improved else run.state.get("best_loss"))
    ckpt = to_checkpoint(run)
    best = {**best_checkpoint(ckpt), "model": model.state_dict(), "ema": None, "eval_weights": "swa"}
    _commit(run, ckpt, best if improved else None, probs)
    if run.dist.main:
        run.tracker.log_epoch(run.state["epoch"], run.state["history"][-1])
        log(f"fold {run.fold} average of the last {swa.count(run)} epochs (train.swa_epochs): valid_loss "
            f"{scores['valid_loss']:.4f} {metric} {score:.4f}" + (" * (best.pt: the average)" if improved else
            f" (not better than the best epoch's {before:.4f}: best.pt keeps that epoch)"))


class Pruned(Exception):
    """Raised by an `on_epoch` callback of `fit` to end the run early (an Optuna trial pruned)."""


def fit(cfg: Any, fold: int, resume: bool = False,
        on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train fold `fold` to the end (or early stop) and return its best score and output folder.

    `on_epoch(epoch, score)` is called after each epoch's validation, once its files (metrics.csv, last.pt)
    are written, with that epoch's competition metric; whatever it raises (e.g. `Pruned`) ends the run and
    goes through to the caller. The scalars go to the run's tracker (comp.train.tracking) on rank 0.

    Raises:
        UserError: bad data or config, a resume that does not match, a non-finite loss.
        Stopped: SIGTERM/SIGINT arrived; a checkpoint to resume from was written.
    """
    run = build_run(cfg, fold, resume)
    metric = run.meta["metric"]
    if run.dist.main:
        run.dir.mkdir(parents=True, exist_ok=True)

    def on_signal(signum, _frame):
        run.stop_signal = signum  # acted on after the current optimizer step

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        run.tracker = start_tracking(cfg, run.dir, fold, run.dist.main, run.state["tracker_ids"])
        first = run.state["epoch"]
        while run.state["epoch"] < cfg.epochs:
            if cfg.train.early_stop and run.state["bad_epochs"] >= cfg.train.early_stop:
                if run.dist.main:
                    log(f"early stop: no {metric} gain in {cfg.train.early_stop} epochs")
                break
            epoch = run.state["epoch"]
            stats = train_one_epoch(run, epoch)
            scores, probs = validate(run)
            score = scores[metric]
            improved = _improved(score, run.state["best"], higher_is_better(metric), scores["valid_loss"],
                                 run.state.get("best_loss"))
            swa.update(run, epoch)  # the weights at this epoch's end into the running average, when averaged
            run.state["history"].append({"epoch": epoch, "train_loss": stats.pop("train_loss"), **scores,
                                         "lr": run.lr, **stats})
            run.state.update(epoch=epoch + 1, step=0, partial=fresh_partial(),
                             best=score if improved else run.state["best"],
                             best_loss=scores["valid_loss"] if improved else run.state.get("best_loss"),
                             bad_epochs=0 if improved else run.state["bad_epochs"] + 1)
            ckpt = to_checkpoint(run)
            _commit(run, ckpt, best_checkpoint(ckpt) if improved else None, probs)
            if run.dist.main:
                run.tracker.log_epoch(epoch, run.state["history"][-1])
                log(f"fold {fold} epoch {epoch}: train_loss {run.state['history'][-1]['train_loss']:.4f} "
                    f"valid_loss {scores['valid_loss']:.4f} {metric} {score:.4f}{' *' if improved else ''} "
                    f"({stats['images_per_s']:.0f} {'img' if cfg.mil.source == 'none' else 'rows'}/s)")
            if agree(run.dist, run.device, run.stop_signal)[0] and run.state["epoch"] < cfg.epochs:
                raise Stopped(run.stop_signal or signal.SIGTERM, run.files.last)
            if on_epoch is not None:
                on_epoch(epoch, score)
        if swa.count(run) and not run.state["swa_done"]:
            run.next_epoch = None  # an early stop's prefetched epoch: the BatchNorm pass reads its own
            _swa_epoch(run, metric)
        elif run.state["epoch"] == first and run.dist.main:
            log(f"fold {fold}: nothing left to train (epoch {first} of epochs={cfg.epochs}, best {metric} "
                f"{run.state['best']})")
        if run.dist.world > 1:
            check_ranks_agree(run.dist, (ckpt_io.weights_digest(run.raw.state_dict()), ckpt_io.weights_digest(
                run.ema.module.state_dict()) if run.ema is not None else ""), fold)
    finally:
        run.tracker.close()
        for s, h in old.items():
            signal.signal(s, h)
        run.data.train_loader = run.data.valid_loader = None  # their persistent workers exit now, not at exit
        if run.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return {"fold": fold, "best": run.state["best"], "metric": metric, "dir": run.dir, "classes": run.meta["classes"],
            "files": run.files}


