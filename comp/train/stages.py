"""Multi-stage recipes (`stages:`): partial configs trained in order for one fold, each stage starting from
the previous stage's best.pt.

Stage i (1-based) of n is the top-level config with `stages[i-1]` merged over it (a partial config: any keys
but `stages`, `stage`, `out_dir`, `folds`, `seed`, `seeds`), `stage` set, and from stage 2 on
`model.pretrained` = the previous stage's `best.pt` (read by comp.models.weights like any local checkpoint:
the kit's own, its EMA weights when it validated them).

Layout: stages 1..n-1 write `<out_dir>/fold<K>/stage<i>/` (config.yaml: the stage's resolved config, best.pt,
last.pt, metrics.csv, sources.json, and done.json once finished); the last stage writes `<out_dir>/fold<K>/`
itself, so predict, the OOF readers, the report and a blend read the final stage's best.pt and oof.csv with
no change. For the same reason prediction reads the top-level config: the last stage may set only the
training recipe (epochs, batch_size, optim, train, model.pretrained/drop_rate/freeze_epochs/backbone_lr_mult),
not what decides the model's input or meaning (image_size, data, images, aug, model.name...); put those at
the top level and override them in the earlier stages (e.g. stage 1 `{image_size: 384, data: {extra_only:
true}}`, stage 2 `{}`).

`data.extra` entries with `stage: pretrain` are used in stages 1..n-1 only; `stage: all` (the default) in
every stage. Resuming (`--resume`) skips every stage whose done.json exists, resumes the first unfinished
one from its own checkpoints and starts the later ones fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from comp import io
from comp.errors import UserError
from comp.log import log
from comp.train.bag import run_dir

REFUSED = ("stages", "stage", "out_dir", "folds", "seed", "seeds")
FINAL_ALLOWED = {"epochs", "batch_size", "optim", "train", "num_workers", "device", "model"}
FINAL_MODEL_ALLOWED = {"pretrained", "drop_rate", "freeze_epochs", "backbone_lr_mult"}
DONE = "done.json"


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a nested mapping."""
    out = []
    for k, v in node.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def stage_configs(cfg: Any) -> list[Any]:
    """The config of each stage of `cfg.stages`, in order (stage 1 first); [cfg] without stages. Each is
    checked as a whole config (comp.validate_config). Model weights of stage i >= 2 come from the folder of
    stage i-1 of the same fold, filled in by `train_stages` (the fold is not known here).

    Raises:
        UserError: a stage that is not a mapping, sets a refused key, or (the last) a key prediction reads;
            a key or value the schema refuses (named with its stage)."""
    from comp import validate_config

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
        keys = _keys(d)
        for k in keys:
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
        out.append(validate_config(c))
    return out


def stage_dir(cfg: Any, fold: int) -> Path:
    """The folder a stage config trains fold `fold` into (comp.train.bag.run_dir: stage<i>/ below it for a
    stage before the last)."""
    return run_dir(cfg, fold)


def _started(d: Path) -> bool:
    return any((d / n).exists() for n in ("last.pt", "recovery.pt"))


def train_stages(cfg: Any, fold: int, resume: bool, fit: Any) -> dict[str, Any]:
    """Train every stage of fold `fold` in order with `fit(cfg, fold, resume=...)` (comp.train.fit) and return
    the last stage's result. Without stages: one fit of `cfg`.

    Raises:
        UserError: a stage folder already trained without `resume` (build_run), or a bad stage config.
        Stopped: a stage was interrupted (rerun with --resume continues that stage)."""
    configs = stage_configs(cfg)
    if len(configs) == 1:
        return fit(configs[0], fold, resume=resume)
    result: dict[str, Any] = {}
    prev: Path | None = None
    n = len(configs)
    for i, c in enumerate(configs, start=1):
        if prev is not None:
            c = OmegaConf.merge(c, {"model": {"pretrained": str(prev / "best.pt")}})
        d = stage_dir(c, fold)
        if i < n and (d / DONE).is_file():
            log(f"fold {fold} stage {i}/{n}: done ({d / DONE}), skipped")
            prev = d
            continue
        again = resume and _started(d)
        log(f"fold {fold} stage {i}/{n}: {'resuming' if again else 'training'} into {d}")
        result = fit(c, fold, resume=again)
        if i < n:
            if not (d / "best.pt").is_file():
                raise UserError(f"stage {i} of fold {fold} left no best.pt in {d}; stage {i + 1} starts from it")
            io.write_json(d / DONE, {"stage": i, "of": n, "best": result.get("best"), "metric": result.get("metric"),
                                     "best_pt": str(d / "best.pt")})
        prev = d
    return result
