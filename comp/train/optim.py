"""The optimizer and the learning rate: parameter groups, AdamW/SGD, and the learning rate as a plain
function of training progress, written into the parameter groups before every optimizer step (nanoGPT's
`get_lr(it)`): no scheduler object, nothing to restore on resume but the position.

Progress is counted in optimizer steps, global step `g = epoch * steps_per_epoch + step_in_epoch` of
`epochs * steps_per_epoch`. A resume at an epoch boundary may change `batch_size`, `train.accum_steps`, the
number of processes or `epochs`: `g` is then recomputed with the new steps per epoch, so the schedule
continues at the same fraction of the run (a scheduler object would keep its step count and jump: 1 GPU →
4 GPUs after 2 of 10 epochs would put the cosine at 80 % instead of 20 %).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: classifier at `lr`, the rest at `lr * backbone_lr_mult`.

    Biases and norm gammas/betas (the 1-D tensors) get no weight decay: "no bias decay" of He et al. 2019,
    Bag of Tricks, sec. 3.1, and timm's default (`filter_bias_and_bn`). Every parameter is included, frozen
    or not, so one optimizer serves the warm-up and the rest of training. Each group carries `lr_mult`,
    which `set_lr` applies every step: `group["lr"] = optim.lr * lr_mult * lr_at(...)`.
    """
    head = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        part = "head" if id(p) in head else "backbone"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        mult = 1.0 if part == "head" else backbone_lr_mult
        out.append({
            "params": params,
            "lr": lr * mult,
            "lr_mult": mult,
            "weight_decay": weight_decay if decay else 0.0,
            "name": part if decay else f"{part}_no_decay",
        })
    return out


def build_optimizer(cfg: Any, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, over `param_groups` of `model`. On CUDA the fused kernels
    (one launch for every parameter's update instead of one per tensor, torch's `fused=True`); elsewhere
    torch's default (foreach where supported). Frozen parameters (model.freeze_epochs) get no .grad, and
    torch's optimizers skip those entirely (no update, no weight decay, no state)."""
    groups = param_groups(model, cfg.optim.lr, cfg.model.backbone_lr_mult, cfg.optim.weight_decay)
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True, **fused)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, **fused)


def lr_at(cfg: Any, step: int, steps_per_epoch: int) -> float:
    """The learning-rate factor (multiplies `optim.lr`) at global optimizer step `step` of a run of
    `epochs * steps_per_epoch` steps: linear warmup from 1 % to 1 over `optim.warmup_epochs`, then cosine
    to `min_lr / lr` (SGDR, Loshchilov & Hutter 2017, without restarts); or one-cycle (30 % up from 4 %,
    then cosine down: the shape of torch's OneCycleLR; it ignores warmup_epochs); or constant after the
    warmup. A pure function of its arguments."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.optim.warmup_epochs * steps_per_epoch)
    floor = cfg.optim.min_lr / cfg.optim.lr
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


def set_lr(optimizer: torch.optim.Optimizer, cfg: Any, step: int, steps_per_epoch: int) -> float:
    """Write the learning rate of global step `step` into every parameter group (`optim.lr * lr_mult *
    lr_at`, in that order of multiplication, the floats torch's LambdaLR gave); returns the head's."""
    factor = lr_at(cfg, step, steps_per_epoch)
    for g in optimizer.param_groups:
        g["lr"] = cfg.optim.lr * g["lr_mult"] * factor
    return optimizer.param_groups[-1]["lr"]
