"""Knowledge distillation (`distill.teacher`): a student trained on a teacher's soft targets mixed with the
hard labels, inside the one training loop (comp.train.loop._forward_loss calls `Distiller.loss`).

Loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", eq. and the T^2 scaling
of their section 2):  alpha * task.loss(hard) + (1 - alpha) * T^2 * soft, where soft is
- softmax heads: the cross-entropy of softmax(z_student / T) against softmax(z_teacher / T) (the KL
  divergence up to the teacher's entropy, a constant);
- sigmoid heads (binary, multi-label): BCE of sigmoid(z_student / T) against sigmoid(z_teacher / T);
- a regression head: the MSE of the student's standardised output to the teacher's value standardised the
  same way (no temperature: T^2 is not applied).

The leak rule: student fold K's soft targets come only from teacher fold K's model (its `best.pt`; a seed
bag's seeds, or several teachers, averaged as logits). That model never saw fold K's validation images, so
nothing of their labels reaches the student's fold K; it did train on the student's training images, whose
hard labels the student sees anyway. The teacher's OOF rows are NOT used: the OOF row of a training image of
fold J came from teacher fold J's model, which trained on fold K's validation images, so their labels would
reach student fold K through it. Teacher and student must share folds.csv (the (id, fold) pairs), else the
teacher's fold K model may have trained on the student's fold K validation images.

The soft targets ride with the hard ones: the training dataset's targets become one float row per image,
the hard target's columns then the teacher's outputs (`pack`), split again in `Distiller.loss`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from comp.config import resolve_path
from comp.data.augment import build_transform
from comp.data.loader import ImageDataset, device_batches, make_loader
from comp.data.mil_cache import sample_loader
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.model import TTA_KEY, FoldModel, input_config, load_model
from comp.io import sha256_file
from comp.log import log
from comp.models.inference import forward_views
from comp.tasks import Task
from comp.teacher.pseudo_rows import folds_sha256


def teachers(cfg: Any) -> list[Experiment]:
    """The teacher experiments of `distill.teacher` (an out_dir, or a list of them: a blend); [] when off.

    Raises:
        UserError: a teacher folder that does not exist or holds no experiment of this kit."""
    value = cfg.distill.teacher
    items = [value] if isinstance(value, str) else list(value or [])
    return [Experiment.open(resolve_path(str(v))) for v in items if str(v)]


def check_teacher(teacher: Experiment, folds: pd.DataFrame, fold: int) -> list[Path]:
    """Teacher fold `fold`'s checkpoints (each seed's of a bag), after checking the teacher was trained on the
    student's split.

    Raises:
        UserError: no folds.csv, another split, or no trained fold `fold` (a blend folder has OOF rows only)."""
    where = str(teacher.dir)
    split = teacher.split.csv
    if not split.is_file():
        raise UserError(f"distill.teacher {where!r} has no {split.name}: name a trained experiment's out_dir")
    if folds_sha256(pd.read_csv(split, dtype={"id": str})) != folds_sha256(folds):
        raise UserError(f"distill.teacher {where!r} was trained on another split than this experiment's "
                        f"{split.name}: its fold models saw other validation images (a leak); copy its {split.name} "
                        f"into this out_dir before the first fold")
    paths = teacher.checkpoints(fold)
    if not all(p.is_file() for p in paths):
        raise UserError(f"distill.teacher {where!r} has no {paths[0].relative_to(teacher.dir)}: student fold {fold} "
                        f"learns from teacher fold {fold}'s model only (a blend folder holds OOF rows: list its "
                        f"members)")
    return paths


@dataclass
class Distiller:
    """Splits packed targets and computes the distillation loss (module doc)."""

    alpha: float
    temperature: float
    hard_width: int  # columns of the hard target in a packed row (1 for a class index or a value)
    hard_index: bool  # the hard target is a class index (stored as a float in the packed row)
    hard_1d: bool  # the hard target is one number per image

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W + K) packed rows → (hard targets as the task takes them, (B, K) teacher outputs)."""
        hard, soft = y[:, :self.hard_width], y[:, self.hard_width:]
        if self.hard_1d:
            hard = hard[:, 0]
            if self.hard_index:
                hard = hard.round().long()
        return hard, soft

    def loss(self, task: Task, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
             smoothing: float) -> torch.Tensor:
        """alpha * task.loss(hard) + (1 - alpha) * T^2 * soft loss, for (B, num_logits) float logits."""
        hard, soft = self.split(y)
        hard_loss = task.loss(logits, hard, weight, smoothing)
        t = self.temperature
        if task.head in ("softmax", "multihead"):  # multihead: the heads' soft cross-entropies summed
            soft_loss = logits.new_zeros(())
            for s in task.slices() if task.head == "multihead" else [slice(None)]:
                target = F.softmax(soft[:, s] / t, dim=-1)
                soft_loss = soft_loss + torch.sum(-target * F.log_softmax(logits[:, s] / t, dim=-1), dim=-1).mean()
            soft_loss = soft_loss * t * t
        elif task.head == "sigmoid":
            soft_loss = F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(soft / t)) * t * t
        else:
            z = (soft[:, 0] - task.mean) / task.std
            soft_loss = F.mse_loss(logits.reshape(-1), z)
        return self.alpha * hard_loss + (1 - self.alpha) * soft_loss


def teacher_outputs(cfg: Any, comp: Any, paths: list[Path], images: list[str], task: Task,
                    device: torch.device) -> np.ndarray:
    """(N, K) float32 teacher outputs over `images`, read as the teacher saw images in validation (its
    checkpoint's image size, preprocessing, transforms and normalisation: comp.experiment.model): the mean
    logits of the checkpoints `paths`, or a regression head's mean value.

    Raises:
        UserError: a checkpoint that cannot be read, a task other than the student's, a head with a scale
            (train.loss laplace | gaussian_nll), or another mil.source than the student's (single images
            against MIL rows)."""
    if task.scale:  # the soft loss is the MSE to the teacher's value: it would teach no sigma
        raise UserError(f"distill.teacher: a value with its uncertainty (train.loss={task.loss_name}) is not "
                        f"distilled; train it on its targets (distill.teacher='')")
    models = [load_model(p) for p in paths]
    for m in models:
        theirs, ours = m.inputs.get("mil.source") or "none", cfg.mil.source
        if theirs != ours:  # one image a row against many: the teacher cannot read the student's rows
            raise UserError(f"distill.teacher checkpoint {str(m.path)!r} was trained with mil.source={theirs} but "
                            f"the student's is mil.source={ours}: a teacher must read the student's rows")
        t = m.task
        if m.meta.get("task") is None or t.head != task.head or list(t.names) != list(task.names) \
                or t.positive != task.positive:
            raise UserError(f"distill.teacher checkpoint {str(m.path)!r} has task {m.meta.get('task')} but the "
                            f"student's is {task.kind} with head {task.head} over {list(task.names)}")
    outs = []
    for group in _by_inputs(models):  # teachers trained at other sizes or preprocessing: each read its own way
        first = group[0]
        seen = input_config(cfg, first)
        dataset = ImageDataset(images, None, seen.image_size, build_transform(seen.aug.valid, "aug.valid"),
                               load=sample_loader(seen, comp))
        loader = make_loader(dataset, cfg.batch_size, None, 0)
        acts = [m.task.activate if task.head == "regression" else None for m in group]
        batches = (x for x, _, _ in device_batches(loader, device, seen.model.in_chans, False, first.norm))
        outs += forward_views([m.model.to(device).eval() for m in group], batches, activation=acts)
    return torch.stack(outs).double().mean(0).float().numpy()


def _by_inputs(models: list[FoldModel]) -> list[list[FoldModel]]:
    """The models grouped by what they see (their checkpoints' inputs), in first-seen order."""
    groups: dict[str, list[FoldModel]] = {}
    for m in models:
        groups.setdefault(json.dumps({k: v for k, v in m.inputs.items() if k != TTA_KEY}, sort_keys=True),
                          []).append(m)
    return list(groups.values())


def pack(hard: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """(N, W + K) float32 rows: the hard targets' columns then the teacher's outputs."""
    h = hard.reshape(len(hard), -1).astype(np.float32)
    return np.concatenate([h, soft.astype(np.float32)], axis=1)


def attach(cfg: Any, comp: Any, data: Any, folds: pd.DataFrame, fold: int, task: Task,
           device: torch.device) -> tuple[Distiller | None, dict[str, Any]]:
    """With `distill.teacher` set: the fold's training targets packed with teacher fold `fold`'s outputs
    (in place, before any loader iterates), and the Distiller with what to record in the checkpoints'
    metadata (the teacher checkpoints and their sha256); (None, {}) when off.

    Raises:
        UserError: a bad alpha/temperature, mixup/cutmix on, or a teacher refused by `check_teacher` or
            `teacher_outputs`."""
    dirs = teachers(cfg)
    if not dirs:
        return None, {}
    d = cfg.distill
    if not 0.0 <= float(d.alpha) <= 1.0:
        raise UserError(f"bad value for config key 'distill.alpha': {d.alpha!r}; a weight in [0, 1]")
    if not float(d.temperature) > 0:
        raise UserError(f"bad value for config key 'distill.temperature': {d.temperature!r}; must be > 0")
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        raise UserError("distill.teacher with train.mixup/cutmix is not supported: set them to 0")
    paths = [p for t in dirs for p in check_teacher(t, folds, fold)]
    log(f"fold {fold}: distilling from {', '.join(str(p) for p in paths)} (alpha {d.alpha}, T {d.temperature})")
    soft = teacher_outputs(cfg, comp, paths, data.train_set.paths, task, device)
    hard = data.train_set.labels
    data.train_set.labels = pack(hard, soft)
    distiller = Distiller(float(d.alpha), float(d.temperature), 1 if hard.ndim == 1 else hard.shape[1],
                          hard.dtype.kind != "f", hard.ndim == 1)
    return distiller, {"teachers": {str(p): sha256_file(p) for p in paths}}
