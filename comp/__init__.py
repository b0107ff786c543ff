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
script or a notebook calls; they are imported on first use, so `import comp` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "load_config": "comp.config",
    "UserError": "comp.errors",
    "load_competition": "comp.data.competition",
    "prepare": "comp.data.prepare",
    "create_model": "comp.models",
    "fit": "comp.train",
    "predict_test": "comp.predict",
    "make_submission": "comp.submit",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'comp' has no attribute {name!r}")
