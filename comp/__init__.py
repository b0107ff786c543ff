"""comp: a Kaggle kit for medical image classification.

The data path, one way, lowest layer first:

    config, errors, log, io, device, metrics, kaggle_cli   the ground every layer stands on
    data/      a download → tables, folds, decoded and cached images, augmentation, batches
    models/    the hand-written ResNets and timm behind create_model; the one forward loop (inference)
    train/     fit(cfg, fold): the loop, its optimizer and schedule, checkpoints, DDP, out-of-fold files
    predict/   every fold × every TTA view → test probabilities; ordinal cut-points
    submit/    the submission frame and its checks, the Kaggle submit flow, the offline package
    report/    CV tables, comparisons, figures

A lower layer never imports a higher one (tests/test_layout.py checks it). The names below are the few a
script or a notebook calls; they are imported on first use, so `import comp` stays light. This module is
above every layer, so the few functions defined here may combine them: `validate_config` (the data layer's
and the model layer's checks of a config), `load_config` (comp.config's, then validate_config) and
`train_fold` (fit, then the fold's figures, as scripts/train_fold.py does).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_API = {
    "UserError": "comp.errors",
    "load_competition": "comp.data.competition",
    "prepare": "comp.data.prepare",
    "create_model": "comp.models",
    "fit": "comp.train",
    "predict_test": "comp.predict",
    "make_submission": "comp.submit",
}

__all__ = sorted([*_API, "load_config", "validate_config", "train_fold"])


def validate_config(cfg: Any) -> Any:
    """Check every value of a loaded config that its types cannot (comp.data.augment.check_config: the
    augmentation pipelines, TTA views, preprocessing steps, metric; the model name), so a typo fails when the
    config loads, not at the stage that reads it (a TTA view at predict, after every fold's training).
    Returns `cfg`.

    Raises:
        UserError: the first bad value, naming its key.
    """
    from comp.data.augment import check_config
    from comp.errors import UserError
    from comp.models.factory import check_model_name

    check_config(cfg)
    from comp.data.extra import check_extra

    check_extra(cfg)
    try:
        check_model_name(cfg.model.name)
    except UserError as e:
        raise UserError(f"bad value for config key 'model.name': {e}") from None
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """The config (comp.config.load_config: schema defaults < YAML at `path`, default configs/demo.yaml <
    `KEY=VALUE` overrides), every value checked (validate_config). Read-only OmegaConf object.

    Raises:
        UserError: a missing or unparsable file, an unknown key, a wrong type or an impossible value.
    """
    from comp.config import load_config as load

    return validate_config(load(path, overrides))


def train_fold(cfg: Any, fold: int, resume: bool = False) -> dict[str, Any]:
    """Train fold `fold` (comp.train.fit) and draw its figures (curves.png and the task's:
    comp.report.plots.fold_figures), as scripts/train_fold.py does. Returns fit's result: {fold, best,
    metric, dir, classes}.

    Raises:
        UserError: bad data or config, a resume that does not match, a non-finite loss.
    """
    from comp.report.plots import fold_figures
    from comp.train import fit

    result = fit(cfg, fold, resume=resume)
    fold_figures(result["dir"], result["classes"], result["metric"])
    return result


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'comp' has no attribute {name!r}")
