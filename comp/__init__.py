"""comp: a Kaggle kit for medical image classification.

The data path, one way, lowest layer first:

    config, errors, log, io, device, metrics, kaggle_cli   the ground every layer stands on
    data/        a download → tables, folds, decoded and cached images, augmentation, batches
    models/      the hand-written ResNets and timm behind create_model; the one forward loop (inference)
    experiment/  the config loaded once (load_config) and the run folder it owns (Experiment): the layout,
                 checkpoints and what they mean, OOF files, the CV score
    predict/     every fold × every TTA view → test outputs; the decoding fit on OOF; the submission frame
    teacher/     pseudo-labels and distillation (a teacher's predictions in training)
    train/       fit(cfg, fold): the loop, its optimizer and schedule, stages, DDP, tuning
    ensemble/    blends, stacking, seed bags: experiments in, one experiment out
    submit/      the Kaggle submit flow, the notebook flow, the offline package
    report/      CV tables, comparisons, figures, explain
    pipeline     one library function per step a user runs (prepare, train_fold), scripts and notebooks alike

A lower layer never imports a higher one, and nothing below this facade imports `comp` itself
(tests/test_layout.py checks both). The names below are the few a script or a notebook calls; they are
imported on first use, so `import comp` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "UserError": "comp.errors",
    "load_config": "comp.experiment",
    "validate_config": "comp.experiment",
    "Experiment": "comp.experiment",
    "load_competition": "comp.data.competition",
    "create_model": "comp.models",
    "fit": "comp.train",
    "prepare": "comp.pipeline",
    "train_fold": "comp.pipeline",
    "predict_test": "comp.predict",
    "make_submission": "comp.predict",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'comp' has no attribute {name!r}")
