"""One fold's trained model and what it means, read from its checkpoint alone (as torchvision's weights carry
their transforms): `load_model(path)` → `FoldModel`.

Every checkpoint the kit writes carries, besides the weights, what the model expects to see (`inputs`: the
model, its input channels, image size, preprocessing steps, DICOM windows and frame rule, the validation
transforms, the input normalisation and the TTA views it was configured with) and what its outputs mean
(`task`, `classes`). Prediction, the offline package and distillation read them from there. A config that
says otherwise about what the model sees (`INPUT_KEYS`) is refused naming the key (`check_config`), and the
folds of one ensemble must agree with each other (`check_agree`); the TTA views are a prediction choice and
may differ (logged). Checkpoints of a kit older than `inputs` are read through the config they carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from comp.config import MIL_KEYS
from comp.data.loader import IMAGENET, Norm
from comp.errors import UserError
from comp.experiment import checkpoint as ckpt_io
from comp.models import create_model
from comp.tasks import Task

# What decides what a trained model sees: a config that differs on one of these is refused at prediction
INPUT_KEYS = ("model.name", "model.in_chans", "image_size", "images.preprocess", "images.dicom_windows",
              "images.dicom_frame", "aug.valid", *MIL_KEYS)
TTA_KEY = "aug.tta"  # recorded; prediction may use other views (a choice made at prediction, logged)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def inputs_of(cfg: Any, norm: Norm) -> dict[str, Any]:
    """What a model trained under `cfg` with input normalisation `norm` sees: {key: value} for INPUT_KEYS and
    TTA_KEY (plain values), and `input_norm` [[mean...], [std...]] (0..1 scale, per RGB channel)."""
    out = {k: _plain(OmegaConf.select(cfg, k)) for k in (*INPUT_KEYS, TTA_KEY)}
    return {**out, "input_norm": [list(map(float, norm[0])), list(map(float, norm[1]))]}


def _saved_inputs(ck: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `inputs`, or for one of an older kit, the same read from the config it carries."""
    if isinstance(ck.get("inputs"), dict):
        return dict(ck["inputs"])
    conf = OmegaConf.create(ck.get("config") or {})
    out = {k: _plain(OmegaConf.select(conf, k, default=None)) for k in (*INPUT_KEYS, TTA_KEY)}
    out["model.name"], out["model.in_chans"] = ck["model_name"], ck["in_chans"]
    mean, std = ck.get("input_norm") or IMAGENET  # older than the key: ImageNet's, whatever the model
    return {**out, "input_norm": [list(map(float, mean)), list(map(float, std))]}


def checkpoint_task(ck: dict[str, Any]) -> Task:
    """The task a checkpoint was trained for; one older than the key holds a multiclass softmax."""
    if ck.get("task"):
        return Task.from_meta(ck["task"])
    return Task(kind="multiclass", names=list(ck.get("classes") or []), head="softmax",
                positive=int(ck.get("positive", 1)))


@dataclass
class FoldModel:
    """One trained model of an experiment (a fold, or a seed of a fold's bag): the weights it was validated
    with, on the CPU in eval mode, and its meaning."""

    path: Path
    model: torch.nn.Module
    task: Task
    classes: list[str]
    inputs: dict[str, Any]  # inputs_of: INPUT_KEYS, TTA_KEY, input_norm (a key None: not recorded, the config's)
    meta: dict[str, Any]  # the checkpoint's other metadata (best, metric, fold, epoch, config, ...)

    @property
    def norm(self) -> Norm:
        mean, std = self.inputs["input_norm"]
        return tuple(mean), tuple(std)

    @property
    def tta(self) -> list[str]:
        return list(self.inputs.get(TTA_KEY) or ["identity"])


def load_model(path: Path) -> FoldModel:
    """The model of a fold checkpoint with the weights it was validated with (the EMA or the SWA average
    when those were), on the CPU in eval mode, and its meaning (module doc).

    Raises:
        UserError: an unreadable or incomplete checkpoint (comp.experiment.checkpoint.load / require), weights
            that do not fit its model, an EMA-validated file without its EMA weights.
    """
    ck = ckpt_io.load(path)
    ckpt_io.require(ck, path, ckpt_io.PREDICT_KEYS, "predict")
    task = checkpoint_task(ck)
    use_ema = ck.get("eval_weights") == "ema"
    if use_ema and ck.get("ema") is None:
        raise UserError(f"{path} was validated with EMA weights but holds none; the file is incomplete")
    inputs = _saved_inputs(ck)
    if inputs.get("mil.source") not in (None, "none"):  # a MIL model: its pool from the checkpoint's inputs
        from comp.models.factory import create_mil_model

        model = create_mil_model(ck["model_name"], ck["num_classes"], inputs["mil.pool"], in_chans=ck["in_chans"])
    else:
        model = create_model(ck["model_name"], ck["num_classes"], in_chans=ck["in_chans"])
    ckpt_io.load_weights(model, ck["ema"] if use_ema else ck["model"], path, ck["model_name"])
    meta = {k: v for k, v in ck.items() if k not in ("model", "ema", "optimizer", "scheduler", "scaler", "rng")}
    return FoldModel(path=path, model=model.eval(), task=task, classes=list(ck.get("classes") or task.names),
                     inputs=inputs, meta=meta)


def check_agree(models: list[FoldModel]) -> None:
    """The models of one ensemble see the same input (INPUT_KEYS, input_norm) and predict the same task: one
    batch of images feeds them all.

    Raises:
        UserError: naming the first key two models disagree on, with both values and files."""
    first = models[0]
    for m in models[1:]:
        for key in (*INPUT_KEYS, "input_norm"):
            if m.inputs.get(key) != first.inputs.get(key):
                raise UserError(f"{m.path} was trained with {key}={m.inputs.get(key)!r} but {first.path} with "
                                f"{first.inputs.get(key)!r}: the folds of one ensemble must see the same input; "
                                f"retrain one of them")
        if (m.task.kind, m.task.head, m.task.names) != (first.task.kind, first.task.head, first.task.names):
            raise UserError(f"{m.path} predicts task={m.task.kind} ({m.task.head} over {m.task.names}) but "
                            f"{first.path} task={first.task.kind} ({first.task.head} over {first.task.names}); "
                            f"retrain one of them")


def check_config(model: FoldModel, cfg: Any, classes: list[str] | None = None) -> None:
    """`cfg` (the config predicting) says of what the model sees what its checkpoint says, and the data has
    the classes it predicts.

    Raises:
        UserError: naming the key whose value would change what the trained model sees (`key old -> new`, as
            --resume names a changed setting), another task, other classes or another class count."""
    for key in INPUT_KEYS:
        now, then = _plain(OmegaConf.select(cfg, key)), model.inputs.get(key)
        if then is not None and now != then:
            raise UserError(f"{model.path} was trained with a different input than this config gives it ({key} "
                            f"{then!r} -> {now!r}): it would change what the trained model sees; predict with the "
                            f"folds' own setting ({key}={then!r}: the --config and overrides they were trained "
                            f"with), or retrain")
    if str(cfg.task) != model.task.kind:
        raise UserError(f"task={cfg.task} but {model.path} was trained for task={model.task.kind}; predict with "
                        f"the folds' own task, or retrain")
    if classes is None:
        return
    if model.classes and list(model.classes) != list(classes):
        raise UserError(f"{model.path} predicts the classes {list(model.classes)} but the data has {list(classes)}")
    if model.meta.get("num_classes") != model.task.num_logits:
        raise UserError(f"{model.path} has {model.meta.get('num_classes')} outputs but the data has "
                        f"{len(classes)} classes {list(classes)}")


def input_config(cfg: Any, model: FoldModel) -> Any:
    """`cfg` with what `model` sees (its INPUT_KEYS, from its checkpoint) in place of the config's own: the
    config that reads images for it (a distillation teacher may have been trained at another size or
    preprocessing than its student); a key the checkpoint does not record (a hand-made file) stays the
    config's. Equal to `cfg` on those keys when check_config passed."""
    conf = OmegaConf.merge(cfg, {})
    OmegaConf.set_readonly(conf, False)
    for key in INPUT_KEYS:
        if model.inputs.get(key) is not None:
            OmegaConf.update(conf, key, model.inputs[key], merge=False)
    OmegaConf.set_readonly(conf, True)
    return conf
