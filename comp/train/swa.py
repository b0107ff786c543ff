"""Checkpoint averaging (SWA-style, `train.swa_epochs: N`): the running mean of the model's weights at the
end of each of the fold's last N epochs (of `epochs`), its BatchNorm statistics recomputed by one pass over
the training images, then validated and saved like an epoch.

The average is kept by torch's `torch.optim.swa_utils.AveragedModel` (equal weights: the running mean
a + (w - a) / (n + 1), Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization"), over the plain model's weights (`Run.raw`), with the EMA on or off: the EMA is what each
epoch validates, the average is validated once at the end as a row of its own (`weights` = swa). Its
BatchNorm running statistics are those of the averaged weights, not the mean of each epoch's: torch's
`update_bn` pass (running mean/variance reset, cumulative average over the pass), fed through the kit's own
loader and normalisation (`device_batches`), so the statistics are those of the real training inputs
(augmented as training augments them; no mixup), in the order of epoch `epochs` (a function of the seed, as
every epoch's: comp.data.loader).

The running average is part of last.pt and recovery.pt (`state_dict`), so a resumed run ends with the same
average as one never interrupted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from comp.data.loader import device_batches


def make_averager(cfg: Any, model: torch.nn.Module) -> AveragedModel | None:
    """The running average of `model`'s weights when train.swa_epochs > 0 (None otherwise). Its buffers
    (BatchNorm statistics) are not averaged: they are recomputed at the end (`recompute_bn`)."""
    if cfg.train.swa_epochs <= 0:
        return None
    return AveragedModel(model, use_buffers=False)


def averages(cfg: Any, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) ends among the last train.swa_epochs of `epochs`."""
    return cfg.train.swa_epochs > 0 and epoch >= cfg.epochs - cfg.train.swa_epochs


def update(run: Any, epoch: int) -> None:
    """Add the model's weights at the end of epoch `epoch` to the running average, when it is one of the
    averaged epochs (`averages`)."""
    if run.swa is not None and averages(run.cfg, epoch):
        run.swa.update_parameters(run.raw)


def count(run: Any) -> int:
    """How many epochs' weights the running average holds (0: none, or averaging off)."""
    return int(run.swa.n_averaged.item()) if run.swa is not None else 0


def bn_inputs(run: Any):
    """The training inputs of the BatchNorm pass: the (B, C, H, W) batches of epoch `epochs` of the fold's
    training loader (this rank's share), normalised as training normalises them, on the run's device."""
    run.data.train_sampler.set_epoch(run.cfg.epochs)
    it = device_batches(iter(run.data.train_loader), run.device, run.cfg.model.in_chans,
                        run.cfg.train.channels_last, run.norm)
    try:
        for x, _, _ in it:
            yield x
    finally:
        it.close()


def recompute_bn(run: Any) -> torch.nn.Module:
    """The averaged model (`run.swa.module`) with its BatchNorm running statistics recomputed by torch's
    `update_bn` over `bn_inputs`, under the run's autocast; returned in eval mode. Under DDP rank 0's
    statistics go to every rank (timm's distribute_bn), as `validate` does for the model."""
    model = run.swa.module
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        update_bn(bn_inputs(run), model)
    if run.dist.world > 1:
        from timm.utils import distribute_bn

        distribute_bn(model, run.dist.world, reduce=False)
    return model.eval()


def state_dict(run: Any) -> dict[str, Any] | None:
    """The running average for a checkpoint: its weights and n_averaged (None when averaging is off)."""
    return run.swa.state_dict() if run.swa is not None else None


def load_state_dict(run: Any, saved: dict[str, Any] | None) -> None:
    """Put a checkpoint's running average back (a checkpoint without one, e.g. averaging switched on at
    resume, leaves the fresh average: nothing averaged yet)."""
    if run.swa is not None and saved is not None:
        run.swa.load_state_dict(saved)
