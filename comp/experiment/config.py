"""The ONE config loader every script, notebook and library caller uses (`load_config`): comp.config's typed
schema < YAML < `KEY=VALUE` overrides, then every value its types cannot check (`validate_config`: the
augmentation pipelines, TTA views, preprocessing steps, metric, data.extra, the model name), and every stage
of a multi-stage recipe (`stage_configs`) as a whole config of its own, so a bad stage fails when the config
loads, not when that stage starts hours later.

Stages (`stages:`): stage i (1-based) of n is the top-level config with `stages[i-1]` merged over it (a
partial config: any keys but `stages`, `stage`, `out_dir`, `folds`, `seed`, `seeds`) and `stage` set (i for a
stage before the last, 0 for the last). The last stage may set only the training recipe (epochs, batch_size,
optim, train, num_workers, device, model.pretrained/drop_rate/freeze_epochs/backbone_lr_mult): what decides
the model's input or meaning (image_size, data, images, aug, model.name...) is read by prediction from the
top level, so it is set there and overridden in the earlier stages (e.g. stage 1 `{image_size: 384, data:
{extra_only: true}}`, stage 2 `{}`). comp.train.stages trains them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from comp.config import check_values, read_config
from comp.data.augment import check_config
from comp.data.extra import check_extra
from comp.errors import UserError
from comp.models.factory import check_model_name

REFUSED = ("stages", "stage", "out_dir", "folds", "seed", "seeds")  # only the top level may set these
FINAL_ALLOWED = {"epochs", "batch_size", "optim", "train", "num_workers", "device", "model"}
FINAL_MODEL_ALLOWED = {"pretrained", "drop_rate", "freeze_epochs", "backbone_lr_mult"}


def validate_config(cfg: Any) -> Any:
    """Check every value of a read config that its types cannot (comp.data.augment.check_config: the
    augmentation pipelines, TTA views, preprocessing steps, task keys, metric; comp.data.extra.check_extra;
    the model name), so a typo fails when the config loads, not at the stage that reads it. Returns `cfg`.

    Raises:
        UserError: the first bad value, naming its key.
    """
    check_config(cfg)
    check_extra(cfg)
    try:
        check_model_name(cfg.model.name)
    except UserError as e:
        raise UserError(f"bad value for config key 'model.name': {e}") from None
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """The config: schema defaults < the YAML at `path` (default configs/demo.yaml) < `KEY=VALUE` overrides
    (comp.config.read_config), every value checked (`validate_config`) and every stage too (`stage_configs`).
    Read-only OmegaConf object.

    Raises:
        UserError: a missing or unparsable file, an unknown key, a wrong type or an impossible value, in the
            config or in one of its stages (named `stages[i]`).
    """
    cfg = validate_config(read_config(path, overrides))
    stage_configs(cfg)
    return cfg


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a nested mapping."""
    out = []
    for k, v in node.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def stage_configs(cfg: Any) -> list[Any]:
    """The config of each stage of `cfg.stages`, in order (stage 1 first), each checked as a whole config
    (`validate_config`); [cfg] without stages. The weights of stage i >= 2 come from stage i-1's folder of
    the same fold, filled in by comp.train.stages (the fold is not known here).

    Raises:
        UserError: a stage that is not a mapping, sets a refused key, or (the last) a key prediction reads;
            a key or value the schema refuses (named with its stage)."""
    stages = list(cfg.stages)
    if not stages:
        return [cfg]
    base = OmegaConf.merge(cfg, {"stages": []})
    out = []
    for i, part in enumerate(stages, start=1):
        last = i == len(stages)
        if not OmegaConf.is_dict(part):
            raise UserError(f"bad value for config key 'stages[{i - 1}]': {part!r} is not a mapping of config keys")
        d = OmegaConf.to_container(part, resolve=True)
        for k in _keys(d):
            top = k.split(".")[0]
            if top in REFUSED:
                raise UserError(f"stages[{i - 1}] sets {k!r}, which only the top level of the config may set")
            if last and (top not in FINAL_ALLOWED or top == "model" and k.split(".")[1] not in FINAL_MODEL_ALLOWED):
                raise UserError(f"stages[{i - 1}] (the last stage) sets {k!r}; prediction reads the top-level "
                                f"config, so set it there and override it in the earlier stages instead")
        try:
            c = OmegaConf.merge(base, d, {"stage": 0 if last else i})
        except Exception as e:  # OmegaConf: an unknown key or a wrong type
            raise UserError(f"stages[{i - 1}]: {e}".splitlines()[0]) from None
        try:
            check_values(c)
            out.append(validate_config(c))
        except UserError as e:
            raise UserError(f"stages[{i - 1}]: {e}") from None
    return out
