"""Training one fold: `fit(cfg, fold)` → `train_one_epoch` / `validate`, all visible in this file.

The loop, per epoch: train (optimizer steps, recovery checkpoints every `train.recovery_every` steps) →
validate → history row → `last.pt`, and `best.pt` + `oof.csv` when the competition metric improves →
early stop. A run resumes from the newest checkpoint in its fold folder, mid-epoch included, and ends
bit-identical to a run never interrupted (on CPU; see comp.dataset for how the data side does it).
"""

from __future__ import annotations

import contextlib
import math
import os
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
from tqdm import tqdm

from comp import checkpoint as ckpt_io
from comp.augment import build_transform
from comp.cache import image_loader
from comp.competition import load_competition
from comp.config import config_hash, resolve_path, to_yaml
from comp.dataset import EpochSampler, ImageDataset, class_weights, make_loader, to_input
from comp.errors import UserError
from comp.log import log
from comp.folds import load_or_make_folds
from comp.metrics import check_metric, score_all
from comp.models import create_model, param_groups, set_backbone_trainable


class Stopped(Exception):
    """Raised after a SIGTERM/SIGINT once the recovery checkpoint is written."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; recovery checkpoint {path}")
        self.signum, self.path = signum, path


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"bad value for config key 'device': {name!r} but no CUDA device is available")
    return torch.device(name)


def lr_lambda(cfg: Any, steps_per_epoch: int):
    """Learning-rate factor as a pure function of the optimizer step: linear warmup from 1 % to 1, then
    cosine to min_lr/lr (SGDR without restarts), one-cycle, or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.optim.warmup_epochs * steps_per_epoch)
    floor = cfg.optim.min_lr / cfg.optim.lr

    def f(step: int) -> float:
        if cfg.optim.schedule == "onecycle":  # 30 % up, 70 % cosine down (torch OneCycleLR's shape)
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


@dataclass
class Run:
    """Everything `train_one_epoch` and `validate` need, built once by `fit`."""

    cfg: Any
    fold: int
    dir: Path
    device: torch.device
    dist: Dist
    model: torch.nn.Module  # the (possibly DDP-wrapped, compiled) model being trained
    raw: torch.nn.Module  # the plain model whose state dict is saved
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: Any
    mixup: Any
    loss_weight: torch.Tensor | None
    amp_dtype: torch.dtype | None
    train_set: ImageDataset
    valid_set: ImageDataset
    valid_ids: list[str]
    train_weights: np.ndarray | None
    steps_per_epoch: int
    meta: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)  # epoch, step, best, history, bad_epochs
    stop_signal: int = 0

    def checkpoint(self, epoch: int, step: int) -> dict[str, Any]:
        """The whole training state as a plain dict (weights_only-loadable)."""
        return {
            "format_version": ckpt_io.FORMAT_VERSION,
            "model": self.raw.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "best": self.state["best"],
            "bad_epochs": self.state["bad_epochs"],
            "history": self.state["history"],
            "rng": ckpt_io.rng_state(),
            **self.meta,
        }


def _build(cfg: Any, fold: int, resume: bool) -> Run:
    d = setup_distributed()
    device = pick_device(cfg.device, d)
    metric = check_metric(cfg.metric)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.backends.cudnn.benchmark = True
    comp = load_competition(cfg)
    if not 0 <= fold < cfg.folds.n_folds:
        raise UserError(f"--fold {fold} is outside 0..{cfg.folds.n_folds - 1} (folds.n_folds={cfg.folds.n_folds})")
    out_dir = resolve_path(cfg, cfg.out_dir)
    folds = load_or_make_folds(cfg, comp.train, out_dir) if d.main else None
    if d.world > 1:
        dist.barrier()
        folds = load_or_make_folds(cfg, comp.train, out_dir)
    tr, va = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    load = image_loader(cfg, comp)
    train_set = ImageDataset(tr["path"].tolist(), tr["label"].tolist(), cfg.image_size,
                             build_transform(cfg.aug.train, "aug.train"), load=load)
    valid_set = ImageDataset(va["path"].tolist(), va["label"].tolist(), cfg.image_size,
                             build_transform(cfg.aug.valid, "aug.valid"), load=load)
    per_rank = math.ceil(len(train_set) / d.world)
    batches = per_rank // cfg.batch_size
    steps_per_epoch = batches // cfg.train.accum_steps
    if steps_per_epoch < 1:
        raise UserError(f"batch_size={cfg.batch_size} x train.accum_steps={cfg.train.accum_steps} is larger than "
                        f"the {per_rank} training images of fold {fold} per process; lower batch_size")

    model = create_model(cfg.model.name, comp.num_classes, in_chans=cfg.model.in_chans,
                         pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups(model, cfg.optim.lr, cfg.model.backbone_lr_mult, cfg.optim.weight_decay)
    if cfg.optim.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr)
    f = lr_lambda(cfg, steps_per_epoch)
    freeze_steps = cfg.model.freeze_epochs * steps_per_epoch
    # backbone group (index 0) is held at lr 0 during the frozen warm-up, then runs at backbone_lr_mult
    lambdas = [lambda s: 0.0 if s < freeze_steps else f(s), f] if len(groups) == 2 else [f] * len(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    use_cuda = device.type == "cuda"
    amp_dtype = None
    if cfg.train.amp and use_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
    mixup = None
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        from timm.data import Mixup
        mixup = Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                      label_smoothing=cfg.train.label_smoothing, num_classes=comp.num_classes)
    labels = tr["label"].to_numpy()
    cw = class_weights(labels, comp.num_classes)
    loss_weight = torch.tensor(cw, dtype=torch.float32, device=device) if cfg.train.class_weights else None
    train_weights = cw[labels] if cfg.train.sampler == "weighted" else None
    raw = model
    if cfg.train.compile:
        model = torch.compile(model)
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
    meta = {"config_hash": config_hash(cfg), "model_name": cfg.model.name, "num_classes": comp.num_classes,
            "in_chans": cfg.model.in_chans, "classes": list(comp.classes), "fold": fold, "metric": metric,
            "eval_weights": "ema" if ema is not None else "model"}
    run = Run(cfg, fold, out_dir / f"fold{fold}", device, d, model, raw, optimizer, scheduler, scaler, ema, mixup,
              loss_weight, amp_dtype, train_set, valid_set, va["id"].tolist(), train_weights, steps_per_epoch, meta,
              state={"epoch": 0, "step": 0, "best": None, "bad_epochs": 0, "history": []})
    if resume:
        _restore(run)
    return run


def _restore(run: Run) -> None:
    """Load the newest valid checkpoint of the fold (recovery.pt or last.pt) into `run`."""
    found = ckpt_io.newest([run.dir / "recovery.pt", run.dir / "last.pt"])
    if found is None:  # nothing saved yet (killed before the first checkpoint): start from scratch
        if run.dist.main:
            log(f"--resume: no checkpoint in {run.dir} yet; starting fold {run.fold} from scratch")
        return
    path, ck = found
    if ck.get("config_hash") != run.meta["config_hash"]:
        raise UserError(f"--resume: {path} was trained with a different model, data or fold setting "
                        f"(config hash {ck.get('config_hash')} != {run.meta['config_hash']}); use another out_dir")
    run.raw.load_state_dict(ck["model"])
    if run.ema is not None and ck.get("ema") is not None:
        run.ema.module.load_state_dict(ck["ema"])
    run.optimizer.load_state_dict(ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    run.scaler.load_state_dict(ck["scaler"])
    run.state.update(epoch=ck["epoch"], step=ck["step"], best=ck["best"], bad_epochs=ck["bad_epochs"],
                     history=list(ck["history"]))
    ckpt_io.set_rng_state(ck["rng"])
    if run.dist.main:
        log(f"resumed from {path}: epoch {ck['epoch']}, step {ck['step']}/{run.steps_per_epoch}")


def _forward_loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits = run.model(x)
    logits = logits.float()
    if run.mixup is not None:  # y is a soft (B, C) target
        return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, y, weight=run.loss_weight, label_smoothing=run.cfg.train.label_smoothing)


def train_one_epoch(run: Run, epoch: int) -> dict[str, float]:
    """Optimizer steps from `run.state['step']` to the end of the epoch; returns loss and throughput."""
    cfg, accum = run.cfg, run.cfg.train.accum_steps
    start = run.state["step"]
    sampler = EpochSampler(len(run.train_set), cfg.seed, epoch, start=start * accum * cfg.batch_size,
                           weights=run.train_weights, rank=run.dist.rank, world_size=run.dist.world)
    loader = make_loader(run.train_set, cfg.batch_size, sampler, cfg.num_workers, drop_last=True,
                         pin_memory=run.device.type == "cuda")
    frozen = epoch < cfg.model.freeze_epochs
    set_backbone_trainable(run.raw, not frozen)
    run.model.train()
    total, count, images, t0, wait = 0.0, 0, 0, time.perf_counter(), 0.0
    bar = tqdm(total=run.steps_per_epoch, initial=start, desc=f"fold {run.fold} epoch {epoch}",
               disable=not run.dist.main, leave=False, dynamic_ncols=True)
    it = iter(loader)
    for step in range(start, run.steps_per_epoch):
        for micro in range(accum):
            tw = time.perf_counter()
            xb, yb = next(it)
            wait += time.perf_counter() - tw
            x = to_input(xb, run.device, run.cfg.model.in_chans, cfg.train.channels_last)
            y = yb.to(run.device, non_blocking=True)
            if run.mixup is not None:
                x, y = run.mixup(x, y)
            loss = _forward_loss(run, x, y)
            if not torch.isfinite(loss):
                raise UserError(f"loss is {loss.item()} at epoch {epoch} step {step} (fold {run.fold}); training "
                                f"stopped, checkpoints in {run.dir} are intact; try a lower optim.lr or train.clip_grad")
            sync = micro == accum - 1 or run.dist.world == 1
            ctx = run.model.no_sync() if not sync and hasattr(run.model, "no_sync") else contextlib.nullcontext()
            with ctx:
                run.scaler.scale(loss / accum).backward()
            total += loss.item() * len(xb)
            count += len(xb)
        if cfg.train.clip_grad > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.raw.parameters(), cfg.train.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.raw)
        images += accum * cfg.batch_size
        bar.update(1)
        if step % cfg.train.log_every == 0:
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}", lr=f"{run.scheduler.get_last_lr()[-1]:.2e}")
        done = step + 1
        every = cfg.train.recovery_every
        if run.stop_signal or (every and done % every == 0 and done < run.steps_per_epoch):
            run.state["step"] = done
            if run.dist.main:
                ckpt_io.save_atomic(run.checkpoint(epoch, done), run.dir / "recovery.pt")
            if run.stop_signal:
                raise Stopped(run.stop_signal, run.dir / "recovery.pt")
    bar.close()
    seconds = time.perf_counter() - t0
    run.state["step"] = 0
    return {"train_loss": total / max(count, 1), "seconds": seconds,
            "images_per_s": images * run.dist.world / max(seconds, 1e-9),
            "data_wait_share": wait / max(seconds, 1e-9)}


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset: ImageDataset, cfg: Any, device: torch.device,
                  amp_dtype: torch.dtype | None, d: Dist = Dist(), desc: str = "validate") -> np.ndarray:
    """Logits (N, C) of `dataset` in order; with DDP each rank takes every world-th image and the
    results are gathered back into order on every rank."""
    model.eval()
    idx = np.arange(d.rank, len(dataset), d.world)
    sub = torch.utils.data.Subset(dataset, idx.tolist())
    loader = make_loader(sub, cfg.batch_size, None, cfg.num_workers, pin_memory=device.type == "cuda")
    outs = []
    for xb, _ in tqdm(loader, desc=desc, leave=False, disable=not d.main, dynamic_ncols=True):
        x = to_input(xb, device, cfg.model.in_chans, cfg.train.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outs.append(model(x).float().cpu())
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)
    if d.world > 1:
        parts = [None] * d.world
        dist.all_gather_object(parts, (idx, logits))
        full = np.zeros((len(dataset), parts[0][1].shape[1]), np.float32)
        for i, lg in parts:
            full[i] = lg
        logits = full
    return logits


def validate(run: Run) -> tuple[dict[str, float], np.ndarray]:
    """Loss and every metric on the fold's validation images, with the EMA weights when kept."""
    model = run.ema.module if run.ema is not None else run.raw
    logits = predict_logits(model, run.valid_set, run.cfg, run.device, run.amp_dtype, run.dist)
    y = run.valid_set.labels
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
    return {"valid_loss": loss, **score_all(y, probs)}, probs


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def fit(cfg: Any, fold: int, resume: bool = False) -> dict[str, Any]:
    """Train fold `fold` to the end (or early stop) and return its best score and output folder.

    Raises:
        UserError: bad data or config, a resume that does not match, a non-finite loss.
        Stopped: SIGTERM/SIGINT arrived; a recovery checkpoint was written.
    """
    run = _build(cfg, fold, resume)
    if run.dist.main:
        if not resume and any((run.dir / n).exists() for n in ("last.pt", "recovery.pt")):
            raise UserError(f"{run.dir} already holds a trained fold; pass --resume to continue it, "
                            f"or set another out_dir")
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "config.yaml").write_text(to_yaml(cfg))

    def on_signal(signum, _frame):
        run.stop_signal = signum  # acted on after the current optimizer step

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    metric = run.meta["metric"]
    try:
        for epoch in range(run.state["epoch"], cfg.epochs):
            stats = train_one_epoch(run, epoch)
            scores, probs = validate(run)
            row = {"epoch": epoch, **stats, **scores, "lr": run.scheduler.get_last_lr()[-1]}
            run.state["history"].append(row)
            score = scores[metric]
            improved = run.state["best"] is None or score > run.state["best"]
            run.state["best"] = score if improved else run.state["best"]
            run.state["bad_epochs"] = 0 if improved else run.state["bad_epochs"] + 1
            if run.dist.main:
                state = run.checkpoint(epoch + 1, 0)
                if improved:
                    ckpt_io.save_atomic(state, run.dir / "best.pt")
                    oof = pd.DataFrame({"id": run.valid_ids, "label": run.valid_set.labels})
                    for c, name in enumerate(run.meta["classes"]):
                        oof[f"prob_{name}"] = probs[:, c]
                    _write_csv_atomic(oof, run.dir / "oof.csv")
                ckpt_io.save_atomic(state, run.dir / "last.pt")
                (run.dir / "recovery.pt").unlink(missing_ok=True)
                _write_csv_atomic(pd.DataFrame(run.state["history"]), run.dir / "metrics.csv")
                log(f"fold {fold} epoch {epoch}: train_loss {stats['train_loss']:.4f} valid_loss "
                           f"{scores['valid_loss']:.4f} {metric} {score:.4f}{' *' if improved else ''} "
                           f"({stats['images_per_s']:.0f} img/s)")
            run.state["epoch"] = epoch + 1
            if cfg.train.early_stop and run.state["bad_epochs"] >= cfg.train.early_stop:
                if run.dist.main:
                    log(f"early stop: no {metric} gain in {cfg.train.early_stop} epochs")
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if run.dist.main:
        _fold_figures(run)
    return {"fold": fold, "best": run.state["best"], "metric": metric, "dir": run.dir}


def _fold_figures(run: Run) -> None:
    from comp.plots import fold_figures

    fold_figures(run.dir, run.meta["classes"], run.meta["metric"])
