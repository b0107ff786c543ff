"""Test predictions: every trained fold × every TTA view → one (N, K) array of the task's outputs
(comp.tasks: class or label probabilities, or values).

Each fold's `best.pt` is loaded with weights_only=True, with the weights it was validated with (the EMA
when training kept one), and must match the config's model, data and image settings (the config hash
saved in it) and the competition's classes. TTA views are exact flips/rotations of the batch on the
device, so a view costs one forward pass and no decoding. Views are averaged within a fold, folds
across the ensemble (equal weights, or each fold's validation score with predict.fold_weights=cv; a seed bag's seeds
are models of their fold, each weighted so: comp.train.bag), as
probabilities (default) or as logits then softmax (predict.ensemble=mean_logit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from comp import io
from comp.config import resolve_path
from comp.data.augment import build_transform, check_tta
from comp.data.cache import image_loader
from comp.data.competition import Competition
from comp.data.images import ImageError
from comp.data.loader import IMAGENET, ImageDataset, Norm, device_batches, make_loader
from comp.device import amp_dtype_for, compile_model, pick_device
from comp.errors import UserError
from comp.log import log, progress
from comp.models import create_model
from comp.models.inference import forward_views
from comp.tasks import Task
from comp.train import checkpoint as ckpt_io
from comp.train.bag import bag_seeds, fold_checkpoints
from comp.train.oof import prob_frame


def trained_folds(cfg: Any) -> list[Path]:
    """The `best.pt` of each fold to ensemble, in fold order (in a seed bag, each fold's seeds in `seeds`
    order: comp.train.bag.fold_checkpoints): every fold of `folds.n_folds`, or those named by `predict.folds`
    (a partial ensemble is never made silently; a partial bag only when `seeds` names the trained ones).

    Raises:
        UserError: a fold to ensemble has no best.pt, or a seed of its bag has none (naming which are trained
            and how to ask for them).
    """
    out = resolve_path(cfg.out_dir)
    wanted = list(cfg.predict.folds) or list(range(cfg.folds.n_folds))
    paths = {k: fold_checkpoints(cfg, k) for k in range(cfg.folds.n_folds)}
    seeds = bag_seeds(cfg)
    if seeds:
        have = {k: [s for s, p in zip(seeds, ps, strict=True) if p.is_file()] for k, ps in paths.items()}
        short = [k for k in wanted if 0 < len(have[k]) < len(seeds)]
        if short:
            k = short[0]
            lack = [s for s in seeds if s not in have[k]]
            raise UserError(f"fold {k} of the seed bag seeds={seeds} lacks seed(s) {lack} (no {out}/fold{k}/seed"
                            f"{lack[0]}/best.pt): train it (scripts/train_fold.py --fold {k} --seed {lack[0]}), or "
                            f"ensemble the trained seeds with seeds=[{','.join(map(str, have[k]))}]")
    trained = [k for k, ps in paths.items() if all(p.is_file() for p in ps)]
    missing = [k for k in wanted if k not in trained]
    if not trained:
        raise UserError(f"no trained fold in {out} (no fold*/best.pt); run scripts/train_fold.py --fold 0 first")
    if missing:
        ask = f"predict.folds=[{','.join(map(str, trained))}]"
        key = "predict.folds" if cfg.predict.folds else "folds.n_folds"
        raise UserError(f"{len(trained)} of {cfg.folds.n_folds} folds trained in {out} (folds {trained}); "
                        f"fold(s) {missing} of {key} have no best.pt: train them (scripts/train_fold.py --fold "
                        f"{missing[0]}), or ensemble the trained ones with {ask}")
    return [p for k in wanted for p in paths[k]]


def model_name(path: Path) -> str:
    """How a log line names the model of a checkpoint: its fold folder (`fold0`), or fold and seed in a
    seed bag (`fold0/seed42`)."""
    parent = path.parent
    return f"{parent.parent.name}/{parent.name}" if parent.name.startswith("seed") else parent.name


def load_fold(path: Path, cfg: Any, classes: list[str] | None = None,
              expect_hash: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of one fold checkpoint with the weights it was validated with, on the CPU in eval mode,
    and the checkpoint's metadata (everything but the weights).

    Args:
        expect_hash: the config hash the fold must carry; default that of `cfg` (the offline package
            passes the hash of the config it shipped, before data.root was pointed elsewhere).

    Raises:
        UserError: an unreadable checkpoint, or one trained with other model, data, image or fold settings
            (naming each key that differs, `old -> new`, as --resume does), classes or class count.
    """
    ck = ckpt_io.load(path)
    ckpt_io.require(ck, path, ckpt_io.PREDICT_KEYS, "predict")
    what = ckpt_io.meaning_changes(ck, cfg, expect_hash=expect_hash)
    if what:
        raise UserError(f"{path} was trained with a different model, data or image setting than this config "
                        f"({what}); predict with the fold's settings, or retrain it")
    if classes is not None and ck.get("classes") is not None and list(ck["classes"]) != list(classes):
        raise UserError(f"{path} predicts the classes {list(ck['classes'])} but the data has {list(classes)}")
    task = fold_task(ck)
    if classes is not None and ck["num_classes"] != task.num_logits:
        raise UserError(f"{path} has {ck['num_classes']} outputs but the data has {len(classes)} classes "
                        f"{list(classes)}")
    use_ema = ck.get("eval_weights") == "ema"
    if use_ema and ck.get("ema") is None:
        raise UserError(f"{path} was validated with EMA weights but holds none; the file is incomplete")
    model = create_model(ck["model_name"], ck["num_classes"], in_chans=ck["in_chans"])
    ckpt_io.load_weights(model, ck["ema"] if use_ema else ck["model"], path, ck["model_name"])
    meta = {k: v for k, v in ck.items() if k not in ("model", "ema", "optimizer", "scheduler", "scaler", "rng")}
    return model.eval(), meta


def fold_weight(meta: dict[str, Any], how: str, path: Path) -> float:
    """The weight of a fold in the ensemble: 1, or its best validation score (predict.fold_weights=cv)."""
    if how == "equal":
        return 1.0
    best = meta.get("best")
    if best is None or not np.isfinite(best) or best <= 0:
        raise UserError(f"predict.fold_weights=cv: {path} has no positive validation score ({best!r}); "
                        f"use predict.fold_weights=equal")
    return float(best)


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


def fold_task(meta: dict[str, Any]) -> Task:
    """The task a fold was trained for (its checkpoint's `task`); a checkpoint of a kit older than the key
    holds a multiclass softmax over its classes."""
    if meta.get("task"):
        return Task.from_meta(meta["task"])
    return Task(kind="multiclass", names=list(meta.get("classes") or []), head="softmax",
                positive=int(meta.get("positive", 1)))


def class_prior(comp: Competition, task: Task | None = None) -> np.ndarray:
    """(K,) float64: the best guess for an image not seen: each class's share of the training labels, each
    label's rate (multi-label), the mean share (soft targets) or the mean value (a regression head)."""
    if task is not None and (task.dense_targets or task.head == "regression"):
        t = comp.targets(comp.train).astype(np.float64)
        return t.mean(0) if t.ndim == 2 else np.array([t.mean()])
    counts = np.bincount(comp.train["label"].to_numpy(dtype=np.int64), minlength=comp.num_classes)
    return counts / max(counts.sum(), 1)


def fold_norm(meta: dict[str, Any]) -> Norm:
    """The input (mean, std) a fold was trained and validated with (its checkpoint's `input_norm`); a
    checkpoint of a kit older than the key was trained with ImageNet's, whatever the model."""
    mean, std = meta.get("input_norm") or IMAGENET
    return tuple(mean), tuple(std)


def fold_outputs(cfg: Any, comp: Competition, models: list[torch.nn.Module], paths: list[str],
                 device: torch.device, desc: str, norm: Norm = IMAGENET,
                 flags: list[torch.Tensor] | None = None, tasks: list[Task] | None = None,
                 features: bool = False) -> list[torch.Tensor]:
    """Each model's (N, K) output over the images `paths`, averaged over the config's TTA views: the mean
    of the views' outputs (`tasks`: each model's Task.activate; default a softmax), or of their logits with
    predict.ensemble=mean_logit (a regression head's values always: its mean and std are its fold's own,
    and the mean of values is the mean of logits mapped linearly). The images are read
    as validation reads them (the cache, or decoded and preprocessed; `aug.valid`; normalised with the
    models' `norm`, `fold_norm`), once for all models. With a `flags` list, an image that cannot be read
    is a black one instead of an error (`MarkBadImages`), and each batch's (B,) 0/1 flags are appended.
    `features`: each model's (N, num_features) pooled embeddings instead (forward_views; --save-features)."""
    views = check_tta(cfg.aug.tta)
    dataset = ImageDataset(paths, None, cfg.image_size, build_transform(cfg.aug.valid, "aug.valid"),
                           load=image_loader(cfg, comp))
    loader = make_loader(MarkBadImages(dataset) if flags is not None else dataset, cfg.batch_size, None,
                         cfg.num_workers, pin_memory=device.type == "cuda")

    def inputs(batches):
        for x, y, _ in batches:
            if flags is not None:
                flags.append(y)
            yield x

    tasks = tasks or [Task(kind="multiclass", names=list(comp.classes), head="softmax")] * len(models)
    logit_mean = cfg.predict.ensemble == "mean_logit" and tasks[0].head != "regression"
    activation = [None if logit_mean else t.activate for t in tasks]
    with progress(len(loader), desc) as bar:  # closed on an error too
        batches = inputs(device_batches(loader, device, cfg.model.in_chans, cfg.train.channels_last, norm))
        return forward_views(models, batches, views, amp_dtype_for(device, cfg.train.amp), activation,
                             on_batch=lambda: bar.update(1), features=features)


def predict_test(cfg: Any, comp: Competition, device: torch.device | None = None, paths: list[Path] | None = None,
                 expect_hash: str | None = None) -> np.ndarray:
    """(N_test, C) class probabilities in `comp.test` order, averaged over the TTA views and the folds.

    Every fold's model is loaded once and kept on the device, and each batch of test images goes through all
    of them (comp.models.inference.forward_views): an image is decoded and preprocessed once for the whole
    ensemble, not once per fold (with the cache off, as in the offline package, decoding is most of the
    time on a CPU).

    Args:
        paths: the fold checkpoints to ensemble; default every `<out_dir>/fold*/best.pt`.
        expect_hash: see `load_fold`.

    A test image that cannot be read stops the prediction (ImageError, naming it) with
    predict.on_bad_image=fail; with `prior` its row is the training class prior (`class_prior`), and a
    warning names each such file.

    Raises:
        UserError: no test images, no trained fold, a fold that does not match the config or the data, a bad
            test image (predict.on_bad_image=fail).
    """
    if len(comp.test) == 0:
        raise UserError(f"no test images found for {cfg.data.root} (data.test_images / data.sample_submission)")
    device = device or pick_device(cfg.device)
    views = check_tta(cfg.aug.tta)
    paths = paths or trained_folds(cfg)
    folds_in = sorted({p.parent.name if p.parent.name.startswith("fold") else p.parent.parent.name for p in paths})
    seeds = f", {len(paths)} models (seeds)" if len(paths) > len(folds_in) else ""
    log(f"ensemble: {len(folds_in)} of {cfg.folds.n_folds} folds ({', '.join(map(model_name, paths))}){seeds} x "
        f"{len(views)} TTA view(s) ({', '.join(views)})")
    models, weights, norms, tasks = [], [], {}, []
    for path in paths:
        model, meta = load_fold(path, cfg, comp.classes, expect_hash)
        norms[path] = fold_norm(meta)
        tasks.append(fold_task(meta))
        model = model.to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = compile_model(model, cfg.predict.compile)  # predict.compile: each resident model compiled once
        w = fold_weight(meta, cfg.predict.fold_weights, path)
        models.append(model)
        weights.append(w)
        best = meta.get("best")
        shown = f"{best:.4f}" if isinstance(best, (int, float)) else "?"
        log(f"{model_name(path)}: validation {meta.get('metric', 'score')} {shown}, weight {w:.4g}, "
            f"{len(views)} TTA view(s)")
    if len(set(norms.values())) > 1:  # one batch feeds every fold: they must agree on the input convention
        (p0, n0), (p1, n1) = list(norms.items())[0], next((p, n) for p, n in norms.items() if n != norms[paths[0]])
        raise UserError(f"{p1} normalises its input with (mean, std) {n1} but {p0} with {n0}: folds of one "
                        f"experiment must share the model's input convention; retrain the older fold")
    prior = cfg.predict.on_bad_image == "prior"
    flags: list[torch.Tensor] | None = [] if prior else None  # per batch: 1 for an image that cannot be read
    outs = fold_outputs(cfg, comp, models, comp.test["path"].tolist(), device,
                        f"predict {len(models)} fold(s) x {len(views)} view(s)", norms[paths[0]], flags, tasks)
    total, weight_sum = None, 0.0
    for w, out in zip(weights, outs, strict=True):  # fold order: the same sums as fold after fold
        total = w * out.double() if total is None else total + w * out.double()
        weight_sum += w
    mean = total / weight_sum
    if cfg.predict.ensemble == "mean_logit" and tasks[0].head != "regression":
        mean = tasks[0].activate(mean)
    probs = mean.float().numpy()
    bad = np.flatnonzero(torch.cat(flags).cpu().numpy() > 0) if prior and flags else np.zeros(0, np.int64)
    if len(bad):
        probs[bad] = class_prior(comp, tasks[0]).astype(np.float32)
        for i in bad:
            log(f"warning: test image {comp.test['path'].iloc[i]} cannot be read; its row is the training class "
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
