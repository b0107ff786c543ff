"""Albumentations pipelines built from config lists: `aug.train`, `aug.valid`, and the TTA views.

A transform is written in YAML as its albumentations class name plus its arguments:

    aug:
      train:
        - {name: HorizontalFlip, p: 0.5}
        - {name: Affine, rotate: [-15, 15], scale: [0.9, 1.1], p: 0.7}

Images reach these pipelines already at `image_size` (resized when decoded or cached), so the
pipelines hold only the random part. TTA views are exact flips/rotations done on the batch on the
device (comp.predict.predict), not albumentations calls.

Seeding: albumentations 2.x hands `Compose.set_random_seed(seed)` on to every child unchanged, so each
child draws from an identical stream and `HorizontalFlip(p=.5)` + `VerticalFlip(p=.5)` fire together or
not at all (no mirror image ever). `seed_transform` gives each transform of the tree its own stream,
spawned from the sample's seed with numpy's `SeedSequence` (independent streams by construction), so
every random decision is independent of the others and still a pure function of the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import albumentations as A
import numpy as np
import torch
from omegaconf import OmegaConf

from comp.data.preprocess import check_steps
from comp.errors import UserError
from comp.metrics import check_metric
from comp.tasks import head_names, head_specs, make_task

# The TTA views: exact flips and rotations of a batch, on the device, no resampling. Negative dims (H = -2,
# W = -1), so one view serves a (B, C, H, W) batch and a (B, N, C, H, W) batch of MIL rows, every instance
# alike.
TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "hvflip": lambda x: x.flip(-2, -1),
    "rot90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
}


def build_transform(specs: Any, key: str) -> A.Compose | None:
    """A.Compose from a list of {name: ..., **args}; None for an empty list. `key` names the config key
    in errors (e.g. aug.train)."""
    specs = OmegaConf.to_container(specs, resolve=True) if OmegaConf.is_config(specs) else list(specs or [])
    if not specs:
        return None
    transforms = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise UserError(f"{key}[{i}] must be a mapping with a 'name', e.g. {{name: HorizontalFlip, p: 0.5}}; "
                            f"got {spec!r}")
        args = dict(spec)
        name = args.pop("name")
        cls = getattr(A, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
            raise UserError(f"{key}[{i}]: {name!r} is not an albumentations transform")
        try:
            transforms.append(_make(cls, args))
        except Exception as e:  # pydantic validation of the arguments
            raise UserError(f"{key}[{i}] ({name}): bad arguments {args}: {str(e).splitlines()[0]}") from None
    return A.Compose(transforms)


def _make(cls: type, args: dict) -> Any:
    """`cls(**args)`, with strict argument checking (a misspelt argument fails, not warns) where the
    transform has a validated schema; those without one (RandomRotate90) reject unknown names anyway."""
    try:
        return cls(**args, strict=True)
    except TypeError as e:
        if "'strict'" not in str(e):
            raise
        return cls(**args)


def seed_transform(transform: A.BaseCompose | A.BasicTransform, seed: int) -> None:
    """Seed `transform` and, recursively, each child with its own independent streams from `seed`.

    Each node of the tree gets a numpy Generator and a `random.Random` (albumentations 2.x draws its `p`
    decisions from `py_random` and its parameters from `random_generator`), keyed by its path in the
    tree (the root (), its children (0,), (1,), ..., theirs (0, 0), ...): the Generator from
    `SeedSequence(seed, spawn_key=path)`, the stream `SeedSequence.spawn` would give without building
    the parents; the Random from the string `"seed/path"`, which `random.seed` hashes with SHA-512.
    The same `seed` gives the same output bit for bit (resume); no two transforms share a stream.
    """
    _seed(transform, seed, ())


def augment_instances(transform: Any, imgs: np.ndarray, seed: int | None, per_row: bool) -> np.ndarray:
    """The instances (N, H, W, 3) uint8 of a MIL row through `transform` (None: unchanged): with `per_row`
    (mil.augment=row) one draw for the row, the transform reseeded with the sample's `seed` before each
    instance so every instance gets the same flip, crop and brightness; else (instance) each its own draw
    from the seed and its index. Without a seed (validation), the transform's own streams."""
    if transform is None:
        return imgs
    out = []
    for j, img in enumerate(imgs):
        if seed is not None:
            seed_transform(transform, seed if per_row else seed + 7919 * (j + 1))
        out.append(transform(image=np.ascontiguousarray(img))["image"])
    return np.stack(out)


def _seed(t: Any, seed: int, path: tuple[int, ...]) -> None:
    seq = np.random.SeedSequence(seed, spawn_key=path)
    # set the attributes directly: Compose.set_random_state would hand the same objects to every child
    t.random_generator = np.random.default_rng(seq)
    t.py_random = random.Random(f"{seed}/{path}")  # str seeds go through SHA-512: unrelated streams
    children = [c for c in getattr(t, "transforms", []) if isinstance(c, A.BasicTransform | A.BaseCompose)]
    for i, child in enumerate(children):
        _seed(child, seed, (*path, i))


def check_tta(views: Any) -> list[str]:
    """The TTA views from config, each one of TTA_VIEWS.

    Raises:
        UserError: an unknown view name, naming it and the choices.
    """
    views = list(views) or ["identity"]
    for v in views:
        if v not in TTA_VIEWS:
            raise UserError(f"aug.tta: unknown view {v!r}; choose from {list(TTA_VIEWS)}")
    return views


def tta_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One TTA view of a (B, C, H, W) or (B, N, C, H, W) batch.

    Raises:
        UserError: an unknown view name.
    """
    return TTA_VIEWS[check_tta([view])[0]](x)


def check_config(cfg: Any) -> None:
    """Everything a config names that the schema's types cannot check, checked when it loads rather than at the
    stage that uses it (a TTA typo found at predict would come after every fold's training): the aug.train and
    aug.valid pipelines (built, so the arguments are validated too), the aug.tta views, the
    images.preprocess steps, the task's keys (task, model.head, train.loss) and the metric (one that scores
    the task). The model name is the model layer's to check (comp.models.factory.check_model_name);
    comp.experiment.load_config, the one loader every script and notebook uses, calls both.

    Raises:
        UserError: the first bad value, naming its key (`aug.tta: unknown view 'idnetity'; ...`).
    """
    names = [str(c) for c in cfg.data.label_columns] or ["0", "1"]  # the task's kind and head, not its names
    if cfg.task == "multihead":  # data.heads' outputs: the competition metrics check them (comp.metrics)
        names = head_names(head_specs(cfg))
    check_metric(cfg.metric, make_task(cfg, names))
    check_steps(cfg.images.preprocess)
    build_transform(cfg.aug.train, "aug.train")
    build_transform(cfg.aug.valid, "aug.valid")
    check_tta(cfg.aug.tta)
