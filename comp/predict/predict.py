"""Test predictions: every trained fold × every TTA view → one (N, K) array of the task's outputs
(comp.tasks: class or label probabilities, or values).

Each fold's best.pt is loaded by the experiment (comp.experiment: weights_only=True, the weights it was
validated with) with what it means: what it sees (image size, preprocessing, DICOM settings, validation
transforms, normalisation) and predicts (task, classes), read from the checkpoint; the folds must agree, and
the config may not say otherwise (a key that would change what a model sees is refused, naming it). TTA
views are exact flips/rotations of the batch on the device, so a view costs one forward pass and no decoding.
Views are averaged within a fold, folds across the ensemble (equal weights, or with predict.fold_weights=cv
each fold's validation score, its inverse for a lower-is-better metric such as MAE: `fold_weight`; a seed
bag's seeds are models of their fold, each weighted so), as probabilities (default) or as logits then
softmax (predict.ensemble=mean_logit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from comp import io
from comp.data.augment import build_transform, check_tta
from comp.data.competition import Competition
from comp.data.image_base import ImageError
from comp.data.loader import ImageDataset, device_batches, make_loader
from comp.data.mil_cache import sample_loader
from comp.device import amp_dtype_for, compile_model, fast_math, pick_device
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.model import FoldModel, input_config
from comp.experiment.oof import prob_frame
from comp.log import log, progress
from comp.metrics import higher_is_better
from comp.models.inference import forward_views
from comp.tasks import Task


def to_device(model: FoldModel, device: torch.device, cfg: Any) -> torch.nn.Module:
    """A fold's network on `device`, channels_last when training used it, compiled with predict.compile."""
    net = model.model.to(device)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return compile_model(net, cfg.predict.compile)  # predict.compile: each resident model compiled once


def fold_weight(model: FoldModel, how: str, metric: str | None = None) -> float:
    """The weight of a fold in the ensemble: 1 (predict.fold_weights=equal), or with `cv` its best validation
    score `s` (best.pt's `best`) turned into "better is heavier" by the metric's direction: `s` for a metric
    where higher is better (AUC, kappa), `1 / s` where lower is better (MAE, RMSE, log loss), so a fold with
    half the MAE counts twice. The metric is the checkpoint's own (`metric` in its meta), `metric` for an
    older checkpoint without one.

    Raises:
        UserError: with `cv`, a fold whose score is missing, not finite or not positive (no weight of this
            form exists: a negative R^2, an MAE of 0), naming the checkpoint.
    """
    if how == "equal":
        return 1.0
    best = model.meta.get("best")
    if best is None or not np.isfinite(best) or best <= 0:
        raise UserError(f"predict.fold_weights=cv: {model.path} has no positive validation score ({best!r}); "
                        f"use predict.fold_weights=equal")
    name = model.meta.get("metric") or metric
    return float(best) if name is None or higher_is_better(name) else 1.0 / float(best)


class MarkBadImages(torch.utils.data.Dataset):
    """predict.on_bad_image=prior: `dataset[i]` as (image, 0), or (a black image, 1) when the image cannot
    be read (ImageError: missing, empty, truncated, corrupt), so one bad file cannot stop the ensemble; the
    flag takes the label's place in the batch and the row is overwritten afterwards (`predict_test`)."""

    def __init__(self, dataset: ImageDataset):
        self.dataset, self.size = dataset, dataset.size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.dataset[i][0], 0
        except ImageError:
            return torch.zeros((3, self.size, self.size), dtype=torch.uint8), 1


def class_prior(comp: Competition, task: Task | None = None) -> np.ndarray:
    """(K,) float64: the best guess for an image not seen: each class's share of the training labels, each
    label's rate (multi-label), the mean share (soft targets), each head's class shares (multihead) or the
    mean value (a regression head; with a scale, the values' mean and sd)."""
    if task is not None and task.head == "multihead":  # each head's class shares over the rows that label it
        t = comp.targets(comp.train).astype(np.float64).sum(0)
        for s in task.slices():
            t[s] = t[s] / t[s].sum() if t[s].sum() > 0 else 1.0 / (s.stop - s.start)
        return t
    if task is not None and (task.dense_targets or task.head == "regression"):
        t = comp.targets(comp.train).astype(np.float64)
        if task.scale:
            return np.array([t.mean(), t.std()])
        return t.mean(0) if t.ndim == 2 else np.array([t.mean()])
    counts = np.bincount(comp.train["label"].to_numpy(dtype=np.int64), minlength=comp.num_classes)
    return counts / max(counts.sum(), 1)


def model_outputs(cfg: Any, comp: Competition, models: list[FoldModel], nets: list[torch.nn.Module], paths: list[str],
                  device: torch.device, desc: str, flags: list[torch.Tensor] | None = None,
                  features: bool = False) -> list[torch.Tensor]:
    """Each model's (N, K) output over the images `paths`, averaged over the config's TTA views (aug.tta: a
    prediction choice): the mean of the views' outputs (each model's Task.activate), or of their logits with
    predict.ensemble=mean_logit (a regression head's values always: its mean and std are its fold's own, and
    the mean of values is the mean of logits mapped linearly). The images are read as the models saw them in
    validation, by their checkpoints (comp.experiment.model: size, preprocessing, DICOM settings, aug.valid,
    normalisation; the cache of those settings when there is one), once for all models: `nets` are the
    models' networks on `device` (to_device). With a `flags` list, an image that cannot be read is a black
    one instead of an error (`MarkBadImages`), and each batch's (B,) 0/1 flags are appended. `features`: each
    model's (N, num_features) pooled embeddings instead (forward_views; --save-features)."""
    first = models[0]
    seen = input_config(cfg, first)  # the config as the models see images (they agree: check_agree)
    views = check_tta(cfg.aug.tta)
    dataset = ImageDataset(paths, None, seen.image_size, build_transform(seen.aug.valid, "aug.valid"),
                           load=sample_loader(seen, comp))
    loader = make_loader(MarkBadImages(dataset) if flags is not None else dataset, cfg.batch_size, None,
                         cfg.num_workers, pin_memory=device.type == "cuda")

    def inputs(batches):
        for x, y, _ in batches:
            if flags is not None:
                flags.append(y)
            yield x

    logit_mean = cfg.predict.ensemble == "mean_logit" and first.task.head != "regression"
    # a scale head's views are averaged as moments (the mixture, comp.likelihood), then mapped back
    activation = [None if logit_mean else lambda x, t=m.task: t.to_moments(t.activate(x)) for m in models]
    with progress(len(loader), desc) as bar:  # closed on an error too
        batches = inputs(device_batches(loader, device, seen.model.in_chans, cfg.train.channels_last, first.norm))
        outs = forward_views(nets, batches, views, amp_dtype_for(device, cfg.train.amp), activation,
                             on_batch=lambda: bar.update(1), features=features)
    return outs if features or logit_mean else [m.task.from_moments(o) for m, o in zip(models, outs, strict=True)]


def ensemble_mean(cfg: Any, models: list[FoldModel], outs: list[torch.Tensor]) -> np.ndarray:
    """(N, K) float32: the models' outputs averaged with their weights (predict.fold_weights), in model order
    (the same sums as fold after fold); logits averaged then activated with predict.ensemble=mean_logit; a
    scale head's [value, sigma] as the weighted mixture (Task.to_moments, comp.likelihood)."""
    total, weight_sum = None, 0.0
    task = models[0].task
    for m, out in zip(models, outs, strict=True):
        w = fold_weight(m, cfg.predict.fold_weights, cfg.metric)
        total = w * task.to_moments(out.double()) if total is None else total + w * task.to_moments(out.double())
        weight_sum += w
    mean = task.from_moments(total / weight_sum)
    if cfg.predict.ensemble == "mean_logit" and models[0].task.head != "regression":
        mean = models[0].task.activate(mean)
    return mean.float().numpy()


def predict_test(exp: Experiment | Any, comp: Competition, device: torch.device | None = None,
                 paths: list[Path] | None = None, models: list[FoldModel] | None = None) -> np.ndarray:
    """(N_test, K) outputs of the experiment's (`exp`, or a config to make one of) fold ensemble in
    `comp.test` order (comp.tasks: class or label probabilities, or values), averaged over the TTA views and
    the folds.

    Every model (`models`, or those of the checkpoints `paths`, default every fold to ensemble and each seed of
    a bag: `exp.load_models`) is kept on the device, and each batch of test images goes through all of them:
    an image is decoded and preprocessed once for the whole ensemble, not once per fold (with the cache off,
    as in the offline package, decoding is most of the time on a CPU).

    A test image that cannot be read stops the prediction (ImageError, naming it) with
    predict.on_bad_image=fail; with `prior` its row is the training class prior (`class_prior`), and a
    warning names each such file.

    Raises:
        UserError: no test images, no trained fold, folds that disagree, a fold that does not match the config
            or the data, a bad test image (predict.on_bad_image=fail).
    """
    exp = Experiment.of(exp)
    cfg = exp.cfg
    if len(comp.test) == 0:
        raise UserError(f"no test images found for {cfg.data.root} (data.test_images / data.sample_submission)")
    device = device or pick_device(cfg.device)
    models, nets = load_ensemble(exp, comp, device, paths, models)
    return ensemble_outputs(cfg, comp, models, nets, comp.test["path"].tolist(), device)


def load_ensemble(exp: Experiment, comp: Competition, device: torch.device, paths: list[Path] | None = None,
                  models: list[FoldModel] | None = None) -> tuple[list[FoldModel], list[torch.nn.Module]]:
    """The ensemble's models (`models`, or those of the checkpoints `paths`, default every fold and seed:
    `exp.load_models`) and their networks on `device` (`to_device`), each logged with its weight; loaded
    once, by predict_test for a test set and by the served predictor (comp.submit.serve) for all its calls.

    Raises:
        UserError: no trained fold, folds that disagree, a fold that does not match the config or the data.
    """
    cfg = exp.cfg
    if math := fast_math(device):
        log(f"predict: {math}")
    views = check_tta(cfg.aug.tta)
    models = models if models is not None else exp.load_models(comp.classes, paths)
    folds_in = sorted({exp.fold_of(m.path) for m in models})
    seeds = f", {len(models)} models (seeds)" if len(models) > len(folds_in) else ""
    log(f"ensemble: {len(folds_in)} of {cfg.folds.n_folds} folds ({', '.join(exp.name(m.path) for m in models)})"
        f"{seeds} x {len(views)} TTA view(s) ({', '.join(views)})")
    if views != models[0].tta:
        log(f"TTA views {views} (aug.tta); the folds were trained with aug.tta={models[0].tta}")
    nets = []
    weights = [fold_weight(m, cfg.predict.fold_weights, cfg.metric) for m in models]
    for m, w in zip(models, weights, strict=True):
        nets.append(to_device(m, device, cfg))
        best = m.meta.get("best")
        shown = f"{best:.4f}" if isinstance(best, (int, float)) else "?"
        log(f"{exp.name(m.path)}: validation {m.meta.get('metric', 'score')} {shown}, weight {w / sum(weights):.3f} "
            f"of the ensemble, {len(views)} TTA view(s)")
    return models, nets


def ensemble_outputs(cfg: Any, comp: Competition, models: list[FoldModel], nets: list[torch.nn.Module],
                     paths: list[str], device: torch.device) -> np.ndarray:
    """(N, K) float32 ensemble outputs of the images `paths` (`model_outputs` then `ensemble_mean`). With
    predict.on_bad_image=prior an image that cannot be read gets the training class prior (`class_prior`)
    and a warning naming it; with `fail` it raises the ImageError."""
    views = check_tta(cfg.aug.tta)
    prior = cfg.predict.on_bad_image == "prior"
    flags: list[torch.Tensor] | None = [] if prior else None  # per batch: 1 for an image that cannot be read
    outs = model_outputs(cfg, comp, models, nets, paths, device,
                         f"predict {len(models)} fold(s) x {len(views)} view(s)", flags)
    probs = ensemble_mean(cfg, models, outs)
    bad = np.flatnonzero(torch.cat(flags).cpu().numpy() > 0) if prior and flags else np.zeros(0, np.int64)
    if len(bad):
        probs[bad] = class_prior(comp, models[0].task).astype(np.float32)
        for i in bad:
            log(f"warning: test image {paths[i]} cannot be read; its row is the training class "
                f"prior (predict.on_bad_image=prior)")
    return probs


def check_probs_path(path: str | Path) -> Path:
    """A --save-probs path that can be written: a .csv or .npy in an existing folder (checked before
    predicting, so a typo costs no inference)."""
    path = Path(path)
    if path.suffix not in (".csv", ".npy"):
        raise UserError(f"--save-probs {path}: name a .csv or .npy file")
    if path.is_dir():
        raise UserError(f"--save-probs {path}: it is a folder; name a .csv or .npy file")
    io.check_dir(path.parent, "--save-probs")  # a file in the way, or a folder not writable
    if not path.parent.is_dir():
        raise UserError(f"--save-probs {path}: folder {path.parent} does not exist")
    return path


def save_probs(path: Path, ids: list[str], probs: np.ndarray, classes: list[str] | Task) -> None:
    """The raw test probabilities for later blending, written atomically: `.csv` as `id,prob_<class>...`
    (the columns of oof.csv), `.npy` as the bare (N, C) float32 array; rows in the submission's order.

    Raises:
        UserError: a path `check_probs_path` refuses, or a refused write (the earlier file stays whole).
    """
    path = check_probs_path(path)
    if path.suffix == ".npy":
        io.save_npy(path, probs.astype(np.float32), what="--save-probs")
    else:
        io.write_csv(path, prob_frame(ids, probs, classes), what="--save-probs")
