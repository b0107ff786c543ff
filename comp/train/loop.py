"""Training one fold: `fit(cfg, fold)` → `train_one_epoch` / `validate`, all visible in this file.

The loop, per epoch: train (optimizer steps, a recovery checkpoint every `train.recovery_every` steps) →
validate → history row → `last.pt`, and `best.pt` + `oof.csv` when the competition metric improves →
early stop. A run resumes from the newest checkpoint in its fold folder, mid-epoch included, and ends
bit-identical to a run never interrupted (on CPU; see comp.data.loader for how the data side does it).

Under torchrun every process runs this same loop on its share of each batch (DDP); losses, metrics and
stop requests are agreed across processes, and only rank 0 writes files. Rank 0's BatchNorm statistics
are the ones that count: DDP broadcasts them before every forward pass, and `validate` hands them to
every rank, so a checkpoint of rank 0 (holding every rank's RNG state) resumes every rank exactly.

Folds in parallel, one per GPU, are independent single-GPU runs (scripts/train_fold.py's help):
    python scripts/prepare.py --config C     # writes folds.csv once, before the runs share it
    for k in 0 1 2 3 4; do CUDA_VISIBLE_DEVICES=$k python scripts/train_fold.py --config C --fold $k & done; wait
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from comp.train import checkpoint as ckpt_io
from comp.data.augment import build_transform
from comp.data.cache import image_loader
from comp.data.competition import load_competition
from comp.config import config_hash, resolve_path, to_yaml
from comp.data.loader import EpochSampler, ImageDataset, amp_dtype_for, class_weights, device_batches, make_loader
from comp.errors import UserError
from comp.data.folds import load_or_make_folds
from comp.log import log
from comp.metrics import check_metric, score_all
from comp.models import create_model, param_groups, set_backbone_trainable


class Stopped(Exception):
    """Raised after a SIGTERM/SIGINT once the recovery checkpoint is written."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {path}")
        self.signum, self.path = signum, path


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL between GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def pick_device(name: str, d: Dist) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"bad value for config key 'device': {name!r} but no CUDA device is available")
    if name in ("auto", "cuda"):
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # timm's Mixup draws from numpy's global RNG
    torch.manual_seed(seed)


def lr_lambda(cfg: Any, steps_per_epoch: int):
    """Learning-rate factor as a pure function of the optimizer step: linear warmup from 1 % to 1, then
    cosine to min_lr/lr (SGDR without restarts); one-cycle (30 % up from 4 %, then cosine down, torch
    OneCycleLR's shape; it ignores warmup_epochs); or constant after the warmup."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.optim.warmup_epochs * steps_per_epoch)
    floor = cfg.optim.min_lr / cfg.optim.lr

    def f(step: int) -> float:
        if cfg.optim.schedule == "onecycle":
            up = max(1, int(0.3 * total))
            if step < up:
                return 0.04 + 0.96 * step / up
            t = min(1.0, (step - up) / max(1, total - up))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if step < warm:
            return 0.01 + 0.99 * step / warm
        if cfg.optim.schedule == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _fresh_partial() -> dict[str, float]:
    """Running sums of the epoch in progress, saved with a mid-epoch checkpoint (global over ranks)."""
    return {"loss_sum": 0.0, "count": 0.0, "images": 0.0, "seconds": 0.0, "wait": 0.0}


@dataclass
class Run:
    """Everything `train_one_epoch` and `validate` need, built once by `fit`."""

    cfg: Any
    fold: int
    dir: Path
    device: torch.device
    dist: Dist
    model: torch.nn.Module  # what the forward pass calls: possibly DDP-wrapped and compiled
    raw: torch.nn.Module  # the plain model: its state dict is saved, EMA and clipping use it
    ddp: Any  # the DistributedDataParallel wrapper, or None
    wrapped_frozen: bool | None  # the freeze state `ddp` was built for (None: not built yet)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: Any  # timm ModelEmaV3 or None
    mixup: Any  # timm Mixup or None
    loss_weight: torch.Tensor | None
    amp_dtype: torch.dtype | None
    train_set: ImageDataset
    valid_set: ImageDataset
    valid_ids: list[str]
    train_sampler: EpochSampler  # moved to each epoch (set_epoch) under the one persistent train_loader
    train_loader: Any  # DataLoader; its workers live as long as the run
    valid_loader: Any  # DataLoader over this rank's share of the validation images (valid_index)
    valid_index: np.ndarray
    steps_per_epoch: int
    meta: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)  # epoch, step, best, bad_epochs, history, partial
    stop_signal: int = 0
    config_saved: bool = False  # config.yaml goes with this attempt's first checkpoint (Run.save)
    next_epoch: tuple[int, Any] | None = None  # (epoch, its train_loader iterator), started before validation

    def checkpoint(self) -> dict[str, Any]:
        """The whole training state as a plain dict (weights_only-loadable). Collective under DDP: every
        rank's RNG state is gathered, so each rank resumes its own dropout and mixup streams."""
        rng = ckpt_io.rng_state()
        if self.dist.world > 1:
            states: list[Any] = [None] * self.dist.world
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        bad = [k for k, v in self.raw.named_parameters() if not torch.isfinite(v).all()]
        if bad:  # a checkpoint never holds broken weights; the previous one stays the newest
            raise UserError(f"weight {bad[0]} is not finite at epoch {self.state['epoch']} step {self.state['step']} "
                            f"(fold {self.fold}); training stopped, checkpoints in {self.dir} are intact; "
                            f"try a lower optim.lr or set train.clip_grad")
        return {
            "format_version": ckpt_io.FORMAT_VERSION,
            "model": self.raw.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state["epoch"],  # the epoch in progress (or next to start when step == 0)
            "step": self.state["step"],  # optimizer steps of that epoch already taken
            "partial": dict(self.state["partial"]),
            "best": self.state["best"],
            "bad_epochs": self.state["bad_epochs"],
            "history": self.state["history"],
            "rng": states,  # one per rank
            "world_size": self.dist.world,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            **self.meta,
        }

    def save(self, state: dict[str, Any], *names: str) -> None:
        if self.dist.main:
            for name in names:
                ckpt_io.save_atomic(state, self.dir / name)
            if not self.config_saved:  # the settings of the checkpoints beside it: an attempt that fails
                _write_atomic(self.dir / "config.yaml", to_yaml(self.cfg))  # before saving any leaves it as it was
                self.config_saved = True

    def agree(self, *values: float) -> list[float]:
        """Sum `values` over all ranks (flags: > 0 when any rank raised one)."""
        if self.dist.world == 1:
            return list(values)
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def _build(cfg: Any, fold: int, resume: bool) -> Run:
    d = setup_distributed(cfg.device)
    device = pick_device(cfg.device, d)
    metric = check_metric(cfg.metric)
    if not 0 <= fold < cfg.folds.n_folds:
        raise UserError(f"--fold {fold} is outside 0..{cfg.folds.n_folds - 1} (folds.n_folds={cfg.folds.n_folds})")
    out_dir = resolve_path(cfg.out_dir)
    fold_dir = out_dir / f"fold{fold}"
    if not resume and any((fold_dir / n).exists() for n in ("last.pt", "recovery.pt")):
        raise UserError(f"{fold_dir} already holds a trained fold; pass --resume to continue it, "
                        f"or set another out_dir")
    if (cfg.train.mixup > 0 or cfg.train.cutmix > 0) and cfg.batch_size % 2:
        raise UserError(f"bad value for config key 'batch_size': {cfg.batch_size} must be even with mixup/cutmix")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls/convs on Ampere+: ~free speed for fp32 parts
    torch.backends.cudnn.allow_tf32 = True
    comp = load_competition(cfg)
    folds = load_or_make_folds(cfg, comp.train, out_dir) if d.main else None
    if d.world > 1:  # rank 0 writes folds.csv once, the others read it
        dist.barrier()
        folds = load_or_make_folds(cfg, comp.train, out_dir)
    tr, va = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    load = image_loader(cfg, comp)
    train_set = ImageDataset(tr["path"].tolist(), tr["label"].tolist(), cfg.image_size,
                             build_transform(cfg.aug.train, "aug.train"), load=load)
    valid_set = ImageDataset(va["path"].tolist(), va["label"].tolist(), cfg.image_size,
                             build_transform(cfg.aug.valid, "aug.valid"), load=load)
    per_rank = math.ceil(len(train_set) / d.world)
    steps_per_epoch = per_rank // cfg.batch_size // cfg.train.accum_steps
    if steps_per_epoch < 1:
        raise UserError(f"batch_size={cfg.batch_size} x train.accum_steps={cfg.train.accum_steps} is larger than "
                        f"the {per_rank} training images of fold {fold} per process; lower batch_size")

    seed_all(cfg.seed)  # the same initial weights on every rank (DDP would broadcast rank 0's anyway)
    model = create_model(cfg.model.name, comp.num_classes, in_chans=cfg.model.in_chans,
                         pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # One optimizer over every parameter: frozen ones (model.freeze_epochs) get no .grad, and torch's
    # optimizers skip those entirely (no update, no weight decay, no state).
    groups = param_groups(model, cfg.optim.lr, cfg.model.backbone_lr_mult, cfg.optim.weight_decay)
    if cfg.optim.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    amp_dtype = amp_dtype_for(device, cfg.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        # warmup: decay 1-(1+step)^(-2/3) capped at ema_decay, so a short fine-tune's EMA is not mostly the
        # initial weights (0.999 reaches the weights of ~1000 steps ago only)
        ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=cfg.train.ema_warmup)
    mixup = None
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                      label_smoothing=cfg.train.label_smoothing, num_classes=comp.num_classes)
    labels = tr["label"].to_numpy()
    cw = class_weights(labels, comp.num_classes)
    loss_weight = torch.tensor(cw, dtype=torch.float32, device=device) if cfg.train.class_weights else None
    train_weights = cw[labels] if cfg.train.sampler == "weighted" else None
    pin = device.type == "cuda"
    train_sampler = EpochSampler(len(train_set), cfg.seed, 0, weights=train_weights, rank=d.rank, world_size=d.world)
    train_loader = make_loader(train_set, cfg.batch_size, train_sampler, cfg.num_workers, drop_last=True,
                               pin_memory=pin, persistent=True)
    valid_index = np.arange(d.rank, len(valid_set), d.world)  # with DDP each rank takes every world-th image
    valid_loader = make_loader(torch.utils.data.Subset(valid_set, valid_index.tolist()), cfg.batch_size, None,
                               cfg.num_workers, pin_memory=pin, persistent=True)

    raw = model
    if cfg.train.compile and d.world == 1:
        model = torch.compile(model)  # under DDP: compiled around the wrapper, see _wrap_ddp
    seed_all(cfg.seed + d.rank)  # each rank its own dropout/mixup stream from here on
    meta = {"config_hash": config_hash(cfg), "model_name": cfg.model.name, "num_classes": comp.num_classes,
            "in_chans": cfg.model.in_chans, "classes": list(comp.classes), "fold": fold, "metric": metric,
            "eval_weights": "ema" if ema is not None else "model"}
    run = Run(cfg, fold, fold_dir, device, d, model, raw, None, None, optimizer, scheduler, scaler, ema, mixup,
              loss_weight, amp_dtype, train_set, valid_set, va["id"].tolist(), train_sampler, train_loader,
              valid_loader, valid_index, steps_per_epoch, meta,
              state={"epoch": 0, "step": 0, "best": None, "bad_epochs": 0, "history": [],
                     "partial": _fresh_partial()})
    if resume:
        _restore(run)
    return run


def _restore(run: Run) -> None:
    """Load the newest valid checkpoint of the fold (recovery.pt or last.pt) into `run`."""
    candidates = [run.dir / "recovery.pt", run.dir / "last.pt"]
    found = ckpt_io.newest(candidates)
    if found is None:
        for p in candidates[::-1]:  # a file that is there but unusable: never start over on top of it
            if p.is_file():
                try:
                    ckpt_io.require(ckpt_io.load(p), p, ckpt_io.RESUME_KEYS, "resume")
                except UserError as e:
                    raise UserError(f"--resume: {e}; move it away to train fold {run.fold} from scratch") from None
        if run.dist.main:  # nothing saved yet (killed before the first checkpoint): start from scratch
            log(f"--resume: no checkpoint in {run.dir} yet; starting fold {run.fold} from scratch")
        return
    path, ck = found
    ckpt_io.require(ck, path, ckpt_io.RESUME_KEYS, "resume")
    changes = ckpt_io.check_resume(ck, path, run.cfg, run.dist.world)
    if ck.get("classes") is not None and list(ck["classes"]) != run.meta["classes"]:
        raise UserError(f"--resume: {path} was trained on the classes {list(ck['classes'])} but the data has "
                        f"{run.meta['classes']}; set another out_dir")
    if changes and run.dist.main:
        log("--resume: settings changed since the checkpoint: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))

    ckpt_io.load_weights(run.raw, ck["model"], path, run.meta["model_name"])
    if run.ema is not None:  # EMA switched on at resume: start it from the model
        ckpt_io.load_weights(run.ema.module, ck["ema"] if ck.get("ema") is not None else ck["model"], path,
                             run.meta["model_name"])
    # Optimizer and schedule state come from the checkpoint; their hyperparameters from the config, so a
    # resume with another optim.lr or weight_decay uses it (same config: the very same floats).
    current = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in run.optimizer.param_groups]
    try:
        run.optimizer.load_state_dict(ck["optimizer"])
        run.scheduler.load_state_dict(ck["scheduler"])
    except (ValueError, KeyError, TypeError) as e:  # another layout of optimizer state
        raise UserError(f"--resume: {path}: its optimizer state does not fit this model's "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for g, cur in zip(run.optimizer.param_groups, current, strict=True):
        g.update(cur)
    run.scheduler.base_lrs = [g["initial_lr"] for g in run.optimizer.param_groups]
    for g, base, fn in zip(run.optimizer.param_groups, run.scheduler.base_lrs, run.scheduler.lr_lambdas,
                               strict=True):
        g["lr"] = base * fn(run.scheduler.last_epoch)
    run.scheduler._last_lr = [g["lr"] for g in run.optimizer.param_groups]
    if ck["scaler"]:  # empty when saved without fp16 loss scaling (CPU, bf16)
        run.scaler.load_state_dict(ck["scaler"])
    run.state.update(epoch=ck["epoch"], step=ck["step"], best=ck["best"], bad_epochs=ck["bad_epochs"],
                     history=list(ck["history"]), partial=dict(ck.get("partial") or _fresh_partial()))
    states = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]
    ckpt_io.set_rng_state(states[run.dist.rank] if len(states) == run.dist.world else states[0])
    if run.dist.main:
        for tmp in run.dir.glob(".*.tmp"):  # a write cut short by a kill
            tmp.unlink(missing_ok=True)
        log(f"resumed from {path}: epoch {ck['epoch']}, step {ck['step']}/{run.steps_per_epoch}")


def _wrap_ddp(run: Run, frozen: bool) -> None:
    """(Re)wrap the model in DDP for this freeze state. DDP all-reduces the parameters that require
    gradients when it is built: wrapped while the backbone is frozen it syncs the head alone, and it
    needs no `find_unused_parameters` traversal of the graph every step. Building it broadcasts rank
    0's parameters and buffers, which every rank holds already."""
    if run.ddp is not None and run.cfg.train.compile:
        torch.compiler.reset()  # compiled code holds the old wrapper, whose gradient hooks must go with it
    run.ddp = run.model = None  # the old wrapper is freed here, and its hooks with it
    run.ddp = torch.nn.parallel.DistributedDataParallel(
        run.raw, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.model = torch.compile(run.ddp) if run.cfg.train.compile else run.ddp  # around DDP: its buckets
    run.wrapped_frozen = frozen


def _forward_loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits = run.model(x)
    logits = logits.float()
    if run.mixup is not None:  # y is a soft (B, C) target, label smoothing already in it
        return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, y, weight=run.loss_weight, label_smoothing=run.cfg.train.label_smoothing)


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
        run.train_sampler.set_epoch(epoch, start=start * accum * cfg.batch_size)
        batches = iter(run.train_loader)
    run.next_epoch = None
    run.model.train()
    frozen = epoch < cfg.model.freeze_epochs
    set_backbone_trainable(run.raw, not frozen)  # after .train(): a frozen backbone's BN stays in eval mode
    if run.dist.world > 1 and run.wrapped_frozen != frozen:
        _wrap_ddp(run, frozen)
    bar = tqdm(total=run.steps_per_epoch, initial=start, desc=f"fold {run.fold} epoch {epoch}",
               disable=not run.dist.main, leave=False, dynamic_ncols=True)
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
        *g, g_bad, g_stop = run.agree(*sums, *counts, float(bad is not None), float(run.stop_signal))
        if g_bad:
            where = f"{bad[1]} at epoch {epoch} step {bad[0]}" if bad else f"not finite at epoch {epoch}"
            raise UserError(f"loss is {where} (fold {run.fold}); training stopped, checkpoints in {run.dir} are "
                            f"intact; try a lower optim.lr or set train.clip_grad")
        for g_loss, g_count in zip(g[:len(sums)], g[len(sums):], strict=True):
            part["loss_sum"] += g_loss
            part["count"] += g_count
            part["images"] += g_count
        return bool(g_stop)

    t0 = time.perf_counter() - part["seconds"]  # the time before a resume counts too
    it = device_batches(batches, run.device, cfg.model.in_chans, cfg.train.channels_last)
    try:
        for step in range(start, run.steps_per_epoch):
            losses, sizes = [], []
            for micro in range(accum):
                tw = time.perf_counter()
                x, y, n = next(it)
                part["wait"] += time.perf_counter() - tw
                if run.mixup is not None:
                    x, y = run.mixup(x, y)
                loss = _forward_loss(run, x, y)
                # DDP all-reduces gradients on the last micro-step only
                sync = micro == accum - 1 or run.ddp is None
                with run.ddp.no_sync() if not sync else contextlib.nullcontext():
                    run.scaler.scale(loss / accum).backward()
                losses.append(loss.detach())
                sizes.append(n)
            if cfg.train.clip_grad > 0:
                run.scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(run.raw.parameters(), cfg.train.clip_grad)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            if run.ema is not None:
                run.ema.update(run.raw, step=run.scheduler.last_epoch)
            pending.append((step, torch.stack(losses), sizes))
            bar.update(1)
            done, every = step + 1, cfg.train.recovery_every
            recover = every and run.scheduler.last_epoch % every == 0 and done < run.steps_per_epoch
            local_stop = run.dist.world == 1 and run.stop_signal  # one process: no need to agree, act now
            if step % cfg.train.log_every == 0 or recover or local_stop or done == run.steps_per_epoch:
                stop = flush()
                bar.set_postfix(loss=f"{part['loss_sum'] / max(part['count'], 1):.4f}",
                                lr=f"{run.scheduler.get_last_lr()[-1]:.2e}")
                if stop or recover:
                    part["seconds"] = time.perf_counter() - t0
                    run.state["step"] = done
                    run.save(run.checkpoint(), "recovery.pt")
                if stop:
                    if run.dist.world > 1:
                        dist.barrier()  # rank 0 has written before any rank exits (torchrun stops the rest)
                    raise Stopped(run.stop_signal or signal.SIGTERM, run.dir / "recovery.pt")
    finally:
        bar.close()  # on an error too: the error line then starts a line of its own
        it.close()
    seconds = time.perf_counter() - t0
    if epoch + 1 < cfg.epochs:
        # The next epoch's first batches are made while this one validates. A batch is one worker's job, so
        # an epoch otherwise starts with the GPU idle for the time one worker takes to load a whole batch:
        # ~0.5 s at 256 images, 13 % of a 3,300-image/s epoch of 13,000 images (H100, BENCHMARKS.md).
        # The order and augmentations depend on (seed, epoch, position) alone, so resuming is unchanged.
        run.train_sampler.set_epoch(epoch + 1)
        run.next_epoch = (epoch + 1, iter(run.train_loader))
    return {"train_loss": part["loss_sum"] / max(part["count"], 1), "seconds": seconds,
            "images_per_s": part["images"] / max(seconds, 1e-9), "data_wait_share": part["wait"] / max(seconds, 1e-9)}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: Any, index: np.ndarray, n: int, cfg: Any, device: torch.device,
                   amp_dtype: torch.dtype | None, num_classes: int, d: Dist = Dist(),
                   desc: str = "validate") -> np.ndarray:
    """Logits (n, C) of a dataset of `n` images in order; `loader` yields this rank's share, the images
    `index` (under DDP every world-th), and the shares are gathered back into order on every rank."""
    model.eval()
    outs = []
    with tqdm(total=len(loader), desc=desc, leave=False, disable=not d.main, dynamic_ncols=True) as bar:
        for x, _, _ in device_batches(loader, device, cfg.model.in_chans, cfg.train.channels_last):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outs.append(model(x).float())
            bar.update(1)
    logits = torch.cat(outs).cpu().numpy() if outs else np.zeros((0, num_classes), np.float32)
    if d.world > 1:
        parts: list[Any] = [None] * d.world
        dist.all_gather_object(parts, (index, logits))
        full = np.zeros((n, num_classes), np.float32)
        for i, lg in parts:
            full[i] = lg
        logits = full
    return logits


def validate(run: Run) -> tuple[dict[str, float], np.ndarray]:
    """Loss and every metric on the fold's validation images, with the EMA weights when kept."""
    if run.dist.world > 1:
        from timm.utils import distribute_bn

        # rank 0's BatchNorm statistics to every rank: the same model everywhere, the one rank 0 saves
        distribute_bn(run.raw, run.dist.world, reduce=False)
        if run.ema is not None:
            distribute_bn(run.ema.module, run.dist.world, reduce=False)
    model = run.ema.module if run.ema is not None else run.raw
    logits = predict_logits(model, run.valid_loader, run.valid_index, len(run.valid_set), run.cfg, run.device,
                            run.amp_dtype, run.meta["num_classes"], run.dist)
    y = run.valid_set.labels
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
    return {"valid_loss": loss, **score_all(y, probs)}, probs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions: the old file stays as it was
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {e.strerror or e}; the previous one is intact") from None


def _improved(score: float, best: float | None) -> bool:
    """Higher is better; a NaN score (e.g. AUC on a one-class fold) never beats a number."""
    if best is None:
        return True
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best


def fit(cfg: Any, fold: int, resume: bool = False) -> dict[str, Any]:
    """Train fold `fold` to the end (or early stop) and return its best score and output folder.

    Raises:
        UserError: bad data or config, a resume that does not match, a non-finite loss.
        Stopped: SIGTERM/SIGINT arrived; a checkpoint to resume from was written.
    """
    run = _build(cfg, fold, resume)
    metric = run.meta["metric"]
    if run.dist.main:
        run.dir.mkdir(parents=True, exist_ok=True)

    def on_signal(signum, _frame):
        run.stop_signal = signum  # acted on after the current optimizer step

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
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
            improved = _improved(score, run.state["best"])
            run.state["history"].append({"epoch": epoch, "train_loss": stats.pop("train_loss"), **scores,
                                         "lr": run.scheduler.get_last_lr()[-1], **stats})
            run.state.update(epoch=epoch + 1, step=0, partial=_fresh_partial(),
                             best=score if improved else run.state["best"],
                             bad_epochs=0 if improved else run.state["bad_epochs"] + 1)
            state = run.checkpoint()
            if run.dist.main:
                if improved:
                    run.save(state, "best.pt")
                    oof = pd.DataFrame({"id": run.valid_ids, "label": run.valid_set.labels})
                    for c, name in enumerate(run.meta["classes"]):
                        oof[f"prob_{name}"] = probs[:, c]
                    _write_atomic(run.dir / "oof.csv", oof.to_csv(index=False))
                _write_atomic(run.dir / "metrics.csv", pd.DataFrame(run.state["history"]).to_csv(index=False))
                # last.pt is the commit point: written after the files above, so a failed write of any of them
                # (disk full) or a kill leaves the previous last.pt, and the resume redoes the epoch and them
                run.save(state, "last.pt")
                (run.dir / "recovery.pt").unlink(missing_ok=True)  # older than last.pt now
                log(f"fold {fold} epoch {epoch}: train_loss {run.state['history'][-1]['train_loss']:.4f} "
                    f"valid_loss {scores['valid_loss']:.4f} {metric} {score:.4f}{' *' if improved else ''} "
                    f"({stats['images_per_s']:.0f} img/s)")
            if run.agree(run.stop_signal)[0] and run.state["epoch"] < cfg.epochs:
                raise Stopped(run.stop_signal or signal.SIGTERM, run.dir / "last.pt")
        if run.state["epoch"] == first and run.dist.main:
            log(f"fold {fold}: nothing left to train (epoch {first} of epochs={cfg.epochs}, best {metric} "
                f"{run.state['best']})")
        if run.dist.world > 1:
            _check_ranks_agree(run)
        if run.dist.main:
            _fold_figures(run)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        run.train_loader = run.valid_loader = None  # their persistent workers exit now, not at interpreter exit
        if run.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return {"fold": fold, "best": run.state["best"], "metric": metric, "dir": run.dir}


def _check_ranks_agree(run: Run) -> None:
    """Every rank must end with the same weights (and EMA); a divergence is a bug, not a user error."""
    mine = (ckpt_io.weights_digest(run.raw.state_dict()),
            ckpt_io.weights_digest(run.ema.module.state_dict()) if run.ema is not None else "")
    digests: list[Any] = [None] * run.dist.world
    dist.all_gather_object(digests, mine)
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {run.dist.world} processes ended with different weights: {digests}")
    if run.dist.main:
        log(f"fold {run.fold}: the {run.dist.world} processes agree, weights sha256 {mine[0]}")


def _fold_figures(run: Run) -> None:
    from comp.report.plots import fold_figures

    if (run.dir / "metrics.csv").is_file() and (run.dir / "oof.csv").is_file():
        fold_figures(run.dir, run.meta["classes"], run.meta["metric"])
