"""The state of one fold's training run (`Run`) and its round trip through a checkpoint: `to_checkpoint`
builds the dict a file holds (comp.experiment.checkpoint writes and reads it), `restore` puts the newest valid
checkpoint of the fold back into a freshly built run, mid-epoch included.

The learning rate is not state: it is a function of the position (comp.train.optim), set again from
(epoch, step) on resume. Nor is the loader's: the sample order and augmentations are functions of (seed,
epoch, position) (comp.data.loader), so the position is all that is saved of the data side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from comp import io
from comp.config import to_yaml
from comp.data.loader import EpochSampler, ImageDataset
from comp.errors import UserError
from comp.experiment import RunFiles
from comp.experiment import checkpoint as ckpt_io
from comp.log import log
from comp.tasks import Task
from comp.train import swa as swa_avg
from comp.train.distributed import Dist, gather_objects
from comp.train.optim import set_lr
from comp.train.tracking import Tracker


def fresh_partial() -> dict[str, float]:
    """Running sums of the epoch in progress, saved with a mid-epoch checkpoint (global over ranks)."""
    return {"loss_sum": 0.0, "count": 0.0, "seconds": 0.0, "wait": 0.0}


def fresh_state() -> dict[str, Any]:
    """The position and bookkeeping of a run that has not started."""
    return {"epoch": 0, "step": 0, "best": None, "best_loss": None, "bad_epochs": 0, "history": [],
            "partial": fresh_partial(), "swa_done": False, "tracker_ids": {}}


@dataclass(kw_only=True)
class FoldData:
    """A fold's training and validation images and their loaders, whose workers live as long as the run."""

    train_set: ImageDataset
    valid_set: ImageDataset
    valid_ids: list[str]
    train_sampler: EpochSampler  # moved to each epoch (set_epoch) under the one persistent train_loader
    train_loader: Any
    valid_loader: Any  # over this rank's share of the validation images (valid_index)
    valid_index: np.ndarray
    valid_rows: list[str] | None = None  # each validation image's submission row (data.submission_id_column)


@dataclass(kw_only=True)
class Run:
    """Everything `train_one_epoch` and `validate` need, built once by comp.train.build.build_run."""

    cfg: Any
    fold: int
    files: RunFiles  # the run's folder and its files (comp.experiment.layout)
    device: torch.device
    dist: Dist
    raw: torch.nn.Module  # the plain model: its state dict is saved, EMA and clipping use it
    model: torch.nn.Module  # what the forward pass calls: possibly DDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Any  # timm ModelEmaV3 or None
    swa: Any  # torch AveragedModel of the last train.swa_epochs epochs' weights, or None (comp.train.swa)
    mixup: Any  # timm Mixup or None
    loss_weight: torch.Tensor | None
    amp_dtype: torch.dtype | None
    data: FoldData
    steps_per_epoch: int
    meta: dict[str, Any]  # what every checkpoint of the run says about its weights (model, classes, ...)
    task: Task  # head, loss, activation (comp.tasks); a regression head's target mean and std
    ddp: Any = None  # the DistributedDataParallel wrapper, or None
    distill: Any = None  # comp.teacher.distill.Distiller when distill.teacher is set: packed targets, its loss
    wrapped_frozen: bool | None = None  # the freeze state `ddp` was built for (None: not built yet)
    state: dict[str, Any] = field(default_factory=fresh_state)  # epoch, step, best, bad_epochs, history, partial,
    # swa_done
    lr: float = 0.0  # the head's learning rate of the next optimizer step
    stop_signal: int = 0
    config_saved: bool = False  # config.yaml goes with this attempt's first checkpoint (save)
    next_epoch: tuple[int, Any] | None = None  # (epoch, its train_loader iterator), started before validation
    tracker: Tracker = field(default_factory=Tracker)  # TensorBoard/MLflow/W&B (comp.train.tracking), set by fit

    @property
    def dir(self) -> Path:
        """The run's folder."""
        return self.files.dir

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The model's input (mean, std) (comp.models.input_norm), saved in every checkpoint."""
        mean, std = self.meta["input_norm"]
        return tuple(mean), tuple(std)

    def global_step(self) -> int:
        """Optimizer steps taken since the start of the run, counted at today's steps per epoch."""
        return self.state["epoch"] * self.steps_per_epoch + self.state["step"]

    def set_lr(self) -> None:
        """The learning rate of the next optimizer step, into the parameter groups."""
        self.lr = set_lr(self.optimizer, self.cfg, self.global_step(), self.steps_per_epoch)


def to_checkpoint(run: Run) -> dict[str, Any]:
    """The whole training state as a plain dict (weights_only-loadable). Collective under DDP: every rank's
    RNG state is gathered, so each rank resumes its own dropout and mixup streams.

    Raises:
        UserError: a weight is not finite (a checkpoint never holds broken weights; the previous one stays
            the newest).
    """
    states = gather_objects(run.dist, ckpt_io.rng_state())
    bad = [k for k, v in run.raw.named_parameters() if not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"weight {bad[0]} is not finite at epoch {run.state['epoch']} step {run.state['step']} "
                        f"(fold {run.fold}); training stopped, checkpoints in {run.dir} are intact; "
                        f"try a lower optim.lr or set train.clip_grad")
    return {
        "format_version": ckpt_io.FORMAT_VERSION,
        "model": run.raw.state_dict(),
        "ema": run.ema.module.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": run.state["epoch"],  # the epoch in progress (or next to start when step == 0)
        "step": run.state["step"],  # optimizer steps of that epoch already taken
        "partial": dict(run.state["partial"]),
        "best": run.state["best"],
        "best_loss": run.state.get("best_loss"),  # the best epoch's valid_loss: breaks a tie on the metric
        "bad_epochs": run.state["bad_epochs"],
        "history": run.state["history"],
        "swa": swa_avg.state_dict(run),  # the running average of the last epochs' weights (train.swa_epochs)
        "swa_done": run.state["swa_done"],  # the average validated, its row in history (comp.train.swa)
        "tracker_ids": dict(run.state["tracker_ids"]),  # MLflow / W&B runs a resume continues (comp.train.tracking)
        "rng": states,  # one per rank
        "world_size": run.dist.world,
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        **run.meta,
    }


# What only a resume reads: best.pt (the epoch that scored best) is predicted from, never resumed from
# (restore reads recovery.pt and last.pt), so it goes without them. The optimizer state is most of a training
# checkpoint (AdamW: two moments per weight, 2x the model; measured, ResNet-18 at 1000 classes: 134 MiB,
# best.pt 45 MiB).
# timm hard-links best to last instead (no extra write), but the link then pins that epoch's optimizer state
# on disk once last.pt moves on; a slim copy costs one write of the weights and stays small.
RESUME_ONLY = ("optimizer", "scaler", "rng", "partial", "swa")


def best_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`ckpt` without what only a resume needs (RESUME_ONLY): the weights, the EMA and the metadata (config,
    history, best score...), what prediction, reports and the offline package read."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_ONLY}


def save(run: Run, ckpt: dict[str, Any], path: Path) -> None:
    """Rank 0 writes `ckpt` to `path` (one of the run's files); the run's config.yaml goes with the first
    checkpoint of this attempt (an attempt that fails before saving any leaves it as it was)."""
    if not run.dist.main:
        return
    ckpt_io.save(ckpt, path)
    if not run.config_saved:
        io.write_text(run.files.config, to_yaml(run.cfg))
        run.config_saved = True


def restore_rng(run: Run, rng: Any, path: Path) -> None:
    """Each rank's RNG states from the checkpoint's list (one per rank of the run that saved it). Under
    another process count (allowed at an epoch boundary: check_resume) rank r takes the saved rank r's
    when there was one, and keeps its own seeded stream (seed + rank, build_run) when there was not; on
    another machine shape only the generators both have are restored. A log line says what was not."""
    states = rng if isinstance(rng, list) else [rng]
    missed = []
    if run.dist.rank < len(states):
        missed += ckpt_io.set_rng_state(states[run.dist.rank])
    if len(states) != run.dist.world:  # ranks past the saved ones keep their own seeded streams
        missed.append(f"the RNG streams of {len(states)} processes, now {run.dist.world}: dropout and mixup draws "
                      f"differ from an uninterrupted run")
    if missed and run.dist.main:
        log(f"--resume: {path}: not restored: " + "; ".join(missed))


def restore(run: Run) -> None:
    """Load the newest valid checkpoint of the fold (recovery.pt or last.pt) into `run`; a fold with none
    yet starts from scratch.

    Raises:
        UserError: a checkpoint that is there but unusable (never started over on top of), or one made with
            another model, data, fold or optimizer setting (comp.experiment.checkpoint.check_resume).
    """
    candidates = [run.files.recovery, run.files.last]
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
    before, now = (ck.get("distill") or {}).get("teachers"), (run.meta.get("distill") or {}).get("teachers")
    if before is not None and before != now:  # the soft targets would come from other models mid-run
        raise UserError(f"--resume: {path} learnt from the teacher checkpoints {before} but distill.teacher now "
                        f"gives {now or 'none'} (retrained, or another teacher); train fold {run.fold} again from "
                        f"scratch (move {run.dir} away) or restore that teacher")
    if changes and run.dist.main:
        log("--resume: settings changed since the checkpoint: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))

    ckpt_io.load_weights(run.raw, ck["model"], path, run.meta["model_name"])
    if run.ema is not None:  # EMA switched on at resume: start it from the model
        ckpt_io.load_weights(run.ema.module, ck["ema"] if ck.get("ema") is not None else ck["model"], path,
                             run.meta["model_name"])
    # The optimizer's state comes from the checkpoint, its hyperparameters from the config, so a resume
    # with another optim.lr or weight_decay uses it (same config: the very same floats).
    current = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in run.optimizer.param_groups]
    try:
        run.optimizer.load_state_dict(ck["optimizer"])
    except (ValueError, KeyError, TypeError) as e:  # another layout of optimizer state
        raise UserError(f"--resume: {path}: its optimizer state does not fit this model's "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for g, cur in zip(run.optimizer.param_groups, current, strict=True):
        g.update(cur)
    if ck["scaler"]:  # empty when saved without fp16 loss scaling (CPU, bf16)
        run.scaler.load_state_dict(ck["scaler"])
    partial = {**fresh_partial(), **{k: v for k, v in (ck.get("partial") or {}).items() if k in fresh_partial()}}
    run.state.update(epoch=ck["epoch"], step=ck["step"], best=ck["best"], best_loss=ck.get("best_loss"),
                     bad_epochs=ck["bad_epochs"],
                     history=list(ck["history"]), partial=partial, swa_done=bool(ck.get("swa_done", False)),
                     tracker_ids=dict(ck.get("tracker_ids") or {}))
    swa_avg.load_state_dict(run, ck.get("swa"))
    run.set_lr()  # the position, at today's steps per epoch (comp.train.optim)
    restore_rng(run, ck["rng"], path)
    if run.dist.main:
        for tmp in run.dir.glob(".*.tmp"):  # a write cut short by a kill
            tmp.unlink(missing_ok=True)
        log(f"resumed from {path}: epoch {ck['epoch']}, step {ck['step']}/{run.steps_per_epoch}")


def improved(score: float, best: float | None, higher: bool = True, loss: float | None = None,
              best_loss: float | None = None) -> bool:
    """Higher is better (lower for log loss, KL, RMSE, MAE); a NaN score (e.g. AUC on a one-class fold)
    never beats a number. A tie on the metric goes to the lower validation loss (`loss` against the best
    epoch's `best_loss`): a small fold's AUC is often 1.0 from the first epoch, whose barely trained model
    would otherwise stay best.pt for good."""
    if best is None:
        return True
    if math.isnan(score):
        return False
    if score == best and loss is not None and best_loss is not None:
        return loss < best_loss
    return math.isnan(best) or (score > best if higher else score < best)
