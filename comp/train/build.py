"""Everything one fold's training needs, built once: its folds and images, the loaders, the model, the
optimizer, the gradient scaler, the EMA and mixup, and the position to start from (`build_run`)."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from comp import io
from comp.config import config_hash
from comp.data.augment import build_transform
from comp.data.competition import load_competition
from comp.data.extra import load_extra, sample_weights, source_counts, training_rows
from comp.data.folds import load_or_make_folds
from comp.data.loader import EpochSampler, ImageDataset, class_weights, make_loader
from comp.data.mil_cache import sample_loader
from comp.device import amp_dtype_for, compile_model, fast_math, pick_device
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.model import inputs_of
from comp.log import log
from comp.metrics import check_metric, positive_index
from comp.models import create_model, input_norm
from comp.tasks import make_task
from comp.teacher.distill import attach as attach_teacher
from comp.teacher.pseudo_rows import training_rows as with_pseudo
from comp.train.distributed import setup_distributed
from comp.train.optim import build_optimizer
from comp.train.state import FoldData, Run, restore
from comp.train.swa import make_averager


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's (timm's Mixup draws from its global RNG) and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fold_data(cfg: Any, comp: Any, folds: Any, fold: int, rank: int, world: int, pin: bool,
              extra: Any = None) -> FoldData:
    """The training images of every other fold (plus every row of `extra`, comp.data.extra.load_extra: the
    external sources, training only) and the validation images of `fold`, with their loaders: the training
    order from an `EpochSampler` (this rank's share; the sources' `weight` as sampling weights), validation
    in order, every world-th image on this rank. Targets as `Competition.targets` gives them (comp.tasks).

    Raises:
        UserError: train.sampler=weighted for a task without one class per row (multi-label, regression,
            multihead)."""
    tr, va = folds[folds["fold"] != fold], folds[folds["fold"] == fold]
    tr = training_rows(cfg, tr, extra if extra is not None else tr.iloc[0:0])
    load = sample_loader(cfg, comp)
    train_paths, train_targets = with_pseudo(cfg, comp, tr, folds)  # + data.pseudo rows (comp.teacher.pseudo_rows)
    train_set = ImageDataset(train_paths, train_targets, cfg.image_size,
                             build_transform(cfg.aug.train, "aug.train"), load=load)
    valid_set = ImageDataset(va["path"].tolist(), comp.targets(va), cfg.image_size,
                             build_transform(cfg.aug.valid, "aug.valid"), load=load)
    weights = None
    if cfg.train.sampler == "weighted":
        if cfg.task in ("multilabel", "regression", "multihead"):
            raise UserError(f"bad value for config key 'train.sampler': weighted samples by class; task={cfg.task} "
                            f"has none (use train.class_weights for BCE pos_weight)")
        labels = tr["label"].to_numpy(np.int64)
        weights = class_weights(labels, comp.num_classes)[labels]
    share = sample_weights(tr)  # data.extra[].weight: each source's share of the draws
    if share is not None:
        weights = share if weights is None else weights * share
    if weights is not None and len(train_paths) > len(tr):  # pseudo rows (after the rest) are drawn as weight 1
        weights = np.concatenate([weights, np.ones(len(train_paths) - len(tr))])
    sampler = EpochSampler(len(train_set), cfg.seed, 0, weights=weights, rank=rank, world_size=world)
    valid_index = np.arange(rank, len(valid_set), world)
    return FoldData(
        train_set=train_set, valid_set=valid_set, valid_ids=va["id"].tolist(), train_sampler=sampler,
        train_loader=make_loader(train_set, cfg.batch_size, sampler, cfg.num_workers, drop_last=True,
                                 pin_memory=pin, persistent=True),
        valid_loader=make_loader(torch.utils.data.Subset(valid_set, valid_index.tolist()), cfg.batch_size, None,
                                 cfg.num_workers, pin_memory=pin, persistent=True),
        valid_index=valid_index, valid_rows=va["row"].astype(str).tolist() if "row" in va.columns else None)


def build_run(cfg: Any, fold: int, resume: bool) -> Run:
    """The run of fold `fold`, at its start or (with `resume`) where its newest checkpoint left it.

    Raises:
        UserError: a fold outside the split, a fold already trained (without `resume`), settings that cannot
            work together (an odd batch with mixup, a batch larger than the fold), or anything the data,
            model or checkpoint loaders refuse.
    """
    d = setup_distributed(cfg.device)
    device = pick_device(cfg.device, d.local_rank)
    if not 0 <= fold < cfg.folds.n_folds:
        raise UserError(f"--fold {fold} is outside 0..{cfg.folds.n_folds - 1} (folds.n_folds={cfg.folds.n_folds})")
    exp = Experiment(cfg)
    files = exp.run_of(cfg, fold)  # fold<K>[/seed<S>][/stage<i>] (comp.experiment.layout)
    fold_dir = io.check_dir(files.dir, "out_dir")
    if not resume and files.started():
        raise UserError(f"{fold_dir} already holds a trained fold; pass --resume to continue it, "
                        f"or set another out_dir")
    if (cfg.train.mixup > 0 or cfg.train.cutmix > 0) and cfg.batch_size % 2:
        raise UserError(f"bad value for config key 'batch_size': {cfg.batch_size} must be even with mixup/cutmix")
    flags = fast_math(device)
    if flags and d.main:
        log(f"fold {fold}: {flags}")
    comp = load_competition(cfg)
    folds = load_or_make_folds(cfg, comp.train, exp.split, several_rows=comp.several_rows) if d.main else None
    if d.world > 1:  # rank 0 writes folds.csv once, the others read it
        torch.distributed.barrier()
        folds = load_or_make_folds(cfg, comp.train, exp.split)
    positive = positive_index(cfg.data.positive_class, comp.classes, comp.label_values) if comp.num_classes == 2 else 1
    task = make_task(cfg, comp.classes, positive)
    metric = check_metric(cfg.metric, task)
    extra = load_extra(cfg, comp)
    data = fold_data(cfg, comp, folds, fold, d.rank, d.world, pin=device.type == "cuda", extra=extra)
    counts = source_counts(training_rows(cfg, folds[folds["fold"] != fold], extra))
    if len(data.train_set) > sum(counts.values()):  # data.pseudo's rows, appended after the rest
        counts["pseudo"] = len(data.train_set) - sum(counts.values())
    task = task.fit_norm(data.train_set.labels)  # a regression head's targets: the training fold's mean, std
    per_rank = math.ceil(len(data.train_set) / d.world)
    steps_per_epoch = per_rank // cfg.batch_size // cfg.train.accum_steps
    if steps_per_epoch < 1:
        raise UserError(f"batch_size={cfg.batch_size} x train.accum_steps={cfg.train.accum_steps} is larger than "
                        f"the {per_rank} training images of fold {fold} per process; lower batch_size")

    seed_all(cfg.seed)  # the same initial weights on every rank (DDP would broadcast rank 0's anyway)
    if cfg.mil.source != "none":  # rows of many images: the backbone on each, pooled (comp.models.mil)
        from comp.models.factory import create_mil_model

        model = create_mil_model(cfg.model.name, task.num_logits, cfg.mil.pool, in_chans=cfg.model.in_chans,
                                 pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate).to(device)
    else:
        model = create_model(cfg.model.name, task.num_logits, in_chans=cfg.model.in_chans,
                             pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, device)
    amp_dtype = amp_dtype_for(device, cfg.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        # warmup: decay 1-(1+step)^(-2/3) capped at ema_decay, so a short fine-tune's EMA is not mostly the
        # initial weights (0.999 reaches the weights of ~1000 steps ago only)
        ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=cfg.train.ema_warmup)
    swa = make_averager(cfg, model)  # before compile/DDP: the average of the plain model's weights
    mixup = None
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        from timm.data import Mixup

        # mixes the identity targets 0..B-1 into the (B, B) matrix that mixes any task's targets (comp.tasks)
        mixup = Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix, label_smoothing=0.0,
                      num_classes=cfg.batch_size)
    loss_weight = None
    if cfg.train.class_weights:
        loss_weight = torch.tensor(task.loss_weight(data.train_set.labels), dtype=torch.float32, device=device)
    distiller, taught = attach_teacher(cfg, comp, data, folds, fold, task, device)  # distill.teacher: soft targets
    raw = model
    if cfg.train.compile and d.world == 1:
        model = compile_model(model, cfg.train.compile)  # its mode; under DDP: around the wrapper (wrap_ddp)
    seed_all(cfg.seed + d.rank)  # each rank its own dropout/mixup stream from here on
    norm = input_norm(raw)
    meta = {"config_hash": config_hash(cfg), "model_name": cfg.model.name, "num_classes": task.num_logits,
            "in_chans": cfg.model.in_chans, "classes": list(comp.classes), "fold": fold, "seed": cfg.seed,
            "metric": metric,
            "eval_weights": "ema" if ema is not None else "model",
            "input_norm": [list(v) for v in norm],  # (mean, std): validation, prediction, package
            "inputs": inputs_of(cfg, norm),  # what the model sees: size, preprocessing, DICOM, views (comp.experiment)
            "positive": positive,  # the class a two-class AUC ranks (data.positive_class)
            "task": task.meta(),  # head, output names, a regression head's target mean and std
            **({"distill": taught} if taught else {})}  # the teacher checkpoints and their sha256
    run = Run(cfg=cfg, fold=fold, files=files, device=device, dist=d, raw=raw, model=model, optimizer=optimizer,
              scaler=scaler, ema=ema, swa=swa, mixup=mixup, loss_weight=loss_weight, amp_dtype=amp_dtype, data=data,
              steps_per_epoch=steps_per_epoch, meta=meta, task=task, distill=distiller)
    run.set_lr()
    if resume:
        restore(run)
    weights = {"competition": 1.0, **dict(zip(extra["source"], extra["weight"].astype(float), strict=True))}
    if d.main:  # written once the run is whole: a refused setting above leaves the fold folder untouched
        fold_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(files.sources, {"fold": fold, "stage": int(cfg.stage), "train_images": counts,
                                      "valid_images": int((folds["fold"] == fold).sum()),
                                      **({"sampling_weights": weights} if len(extra) else {})})
    if len(extra) or cfg.data.extra_only or "pseudo" in counts:
        shares = "" if all(w == 1.0 for w in extra["weight"]) else f", sampling weights {weights}"
        log(f"fold {fold}: training images per source {counts}{shares} ({files.sources})")
    return run
