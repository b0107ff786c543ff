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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from comp.config import resolve_path
from comp.data.augment import build_transform
from comp.data.cache import image_loader
from comp.data.loader import IMAGENET, ImageDataset, device_batches, make_loader
from comp.errors import UserError
from comp.io import sha256_file
from comp.log import log
from comp.models import create_model
from comp.models.inference import forward_views
from comp.tasks import Task
from comp.train import checkpoint as ckpt_io
from comp.train.pseudo import folds_sha256


def teachers(cfg: Any) -> list[Path]:
    """The teacher out_dirs of `distill.teacher` (one, or a list: a blend), resolved; [] when off."""
    value = cfg.distill.teacher
    items = [value] if isinstance(value, str) else list(value or [])
    return [resolve_path(str(v)) for v in items if str(v)]


def fold_models(teacher: Path, fold: int) -> list[Path]:
    """Teacher fold `fold`'s checkpoints: `fold<K>/best.pt`, or each seed's of a seed bag."""
    one = teacher / f"fold{fold}" / "best.pt"
    return [one] if one.is_file() else sorted((teacher / f"fold{fold}").glob("seed*/best.pt"))


def check_teacher(teacher: Path, folds: pd.DataFrame, fold: int) -> list[Path]:
    """Teacher fold `fold`'s checkpoints, after checking the teacher was trained on the student's split.

    Raises:
        UserError: no folds.csv, another split, or no trained fold `fold` (a blend folder has OOF rows only)."""
    split = teacher / "folds.csv"
    if not split.is_file():
        raise UserError(f"distill.teacher {str(teacher)!r} has no folds.csv: name a trained experiment's out_dir")
    if folds_sha256(pd.read_csv(split, dtype={"id": str})) != folds_sha256(folds):
        raise UserError(f"distill.teacher {str(teacher)!r} was trained on another split than this experiment's "
                        f"folds.csv: its fold models saw other validation images (a leak); copy its folds.csv "
                        f"into this out_dir before the first fold")
    paths = fold_models(teacher, fold)
    if not paths:
        raise UserError(f"distill.teacher {str(teacher)!r} has no fold{fold}/best.pt: student fold {fold} learns "
                        f"from teacher fold {fold}'s model only (a blend folder holds OOF rows: list its members)")
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
        if task.head == "softmax":
            target = F.softmax(soft / t, dim=-1)
            soft_loss = torch.sum(-target * F.log_softmax(logits / t, dim=-1), dim=-1).mean() * t * t
        elif task.head == "sigmoid":
            soft_loss = F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(soft / t)) * t * t
        else:
            z = (soft[:, 0] - task.mean) / task.std
            soft_loss = F.mse_loss(logits.reshape(-1), z)
        return self.alpha * hard_loss + (1 - self.alpha) * soft_loss


def teacher_outputs(cfg: Any, comp: Any, paths: list[Path], images: list[str], task: Task,
                    device: torch.device) -> np.ndarray:
    """(N, K) float32 teacher outputs over `images` (read as validation reads them, at the student's image
    settings): the mean logits of the checkpoints `paths`, or a regression head's mean value.

    Raises:
        UserError: a checkpoint that cannot be read, or whose task does not match the student's."""
    models, norms = [], set()
    for p in paths:
        ck = ckpt_io.load(p)
        ckpt_io.require(ck, p, ckpt_io.PREDICT_KEYS, "distil from")
        t = Task.from_meta(ck["task"]) if ck.get("task") else None
        if t is None or t.head != task.head or list(t.names) != list(task.names) or t.positive != task.positive:
            raise UserError(f"distill.teacher checkpoint {str(p)!r} has task {ck.get('task')} but the student's "
                            f"is {task.kind} with head {task.head} over {list(task.names)}")
        model = create_model(ck["model_name"], ck["num_classes"], in_chans=ck["in_chans"])
        ema = ck.get("eval_weights") == "ema" and ck.get("ema") is not None
        ckpt_io.load_weights(model, ck["ema"] if ema else ck["model"], p, ck["model_name"])
        models.append(model.to(device).eval())
        norms.add(tuple(map(tuple, ck.get("input_norm") or IMAGENET)))
        in_chans = ck["in_chans"]
        acts = t.activate if t.head == "regression" else None
    if len(norms) > 1:
        raise UserError(f"distill.teacher checkpoints {[str(p) for p in paths]} normalise their input differently")
    dataset = ImageDataset(images, None, cfg.image_size, build_transform(cfg.aug.valid, "aug.valid"),
                           load=image_loader(cfg, comp))
    loader = make_loader(dataset, cfg.batch_size, None, 0)
    (mean, std), = norms
    batches = (x for x, _, _ in device_batches(loader, device, in_chans, False, (mean, std)))
    outs = forward_views(models, batches, activation=acts)
    return torch.stack(outs).double().mean(0).float().numpy()


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
