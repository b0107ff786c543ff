"""Out-of-fold predictions made the way test predictions are: each fold's `best.pt` on its own validation
images, averaged over the config's TTA views.

Training writes each fold's oof.csv from one forward pass per image (no TTA). Test predictions average the
TTA views, which smooths the probabilities and moves the expected grade; kappa cut-points tuned on the
plain OOF are then applied to a differently distributed score. `write_tta_oof` predicts each trained
fold's validation rows (from the experiment's folds.csv) with `comp.predict.predict.model_outputs`, the very
loop `predict_test` runs, and writes the fold's oof_tta.csv in the format of oof.csv (id, targets,
outputs). Each file is reused while its digest, kept beside it (oof_tta.json), still matches: the bytes of
the fold's best.pt files and folds.csv and every setting that changes the numbers (TTA views, aug.valid,
predict.ensemble, train.amp, the config hash of the model and images).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from comp.config import config_hash
from comp.data.augment import check_tta
from comp.data.competition import Competition, load_competition
from comp.data.folds import load_or_make_folds
from comp.device import pick_device
from comp.errors import UserError
from comp.experiment import Experiment, RunFiles
from comp.experiment.oof import prob_frame
from comp.io import sha256_file, write_csv, write_json
from comp.log import log
from comp.predict.predict import model_outputs, to_device


def uses_tta(cfg: Any) -> bool:
    """Whether test predictions average more than the identity view (then the plain OOF differs from them)."""
    return check_tta(cfg.aug.tta) != ["identity"]


def settings(cfg: Any) -> dict[str, Any]:
    """The settings a TTA OOF file depends on, besides the checkpoint and the split."""
    return {"views": check_tta(cfg.aug.tta), "valid": OmegaConf.to_container(cfg.aug.valid, resolve=True),
            "ensemble": cfg.predict.ensemble, "amp": bool(cfg.train.amp), "config_hash": config_hash(cfg)}


def digest(ckpt: Path, split: Path, cfg: Any) -> str:
    """sha256 (16 hex digits) of a fold's checkpoint bytes, folds.csv's bytes and `settings(cfg)`."""
    h = hashlib.sha256()
    for part in (sha256_file(ckpt), sha256_file(split), json.dumps(settings(cfg), sort_keys=True)):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _fresh(fold: RunFiles, want: str) -> bool:
    """The fold's oof_tta.csv exists, was made with digest `want` and is the file the digest was saved with."""
    try:
        meta = json.loads(fold.oof_tta_meta.read_text())
        return meta.get("digest") == want and meta.get("csv_sha256") == sha256_file(fold.oof_tta)
    except (OSError, ValueError, AttributeError):
        return False


def write_tta_oof(exp: Experiment | Any, comp: Competition | None = None, device: torch.device | None = None
                  ) -> list[Path]:
    """Every trained fold's oof_tta.csv (a seed bag: every seed of the fold trained), in fold order, made or
    reused (module doc).

    Each file holds that fold's validation rows of the experiment's folds.csv in its order: id, the targets,
    and the outputs = the mean over the TTA views of the activated outputs (predict.ensemble=mean_prob) or the
    activation of the mean logits (mean_logit), as one fold of `predict_test` averages them.

    Args:
        comp: the loaded competition (default: loaded from the config); its training images are predicted.
        device: default `pick_device(cfg.device)`.

    Raises:
        UserError: no trained fold, no folds.csv or one that no longer matches the data, a checkpoint that
            does not match the config (comp.experiment.model.check_config), a fold without validation rows.
    """
    exp = Experiment.of(exp)
    cfg = exp.cfg
    ckpts = [(k, exp.checkpoints(k)) for k in exp.trained_folds()]
    if not ckpts:
        raise UserError(f"no trained fold in {exp.dir} to predict the out-of-fold images of")
    split = exp.split.csv
    if not split.is_file():
        raise UserError(f"{split} is missing: the TTA out-of-fold predictions need the split the folds were "
                        f"trained on (set aug.tta=[identity] to fit the cut-points on the plain oof.csv)")
    wants = {k: "".join(digest(p, split, cfg) for p in ps) for k, ps in ckpts}
    todo = [(k, ps) for k, ps in ckpts if not _fresh(exp.fold(k), wants[k])]
    if todo:
        _predict(exp, comp or load_competition(cfg), device or pick_device(cfg.device), todo, wants)
    return [exp.fold(k).oof_tta for k, _ in ckpts]


def _predict(exp: Experiment, comp: Competition, device: torch.device, todo: list[tuple[int, list[Path]]],
             wants: dict[int, str]) -> None:
    """Each fold's validation images through its model (a seed bag: the mean of its seeds' outputs)."""
    cfg = exp.cfg
    folds = load_or_make_folds(cfg, comp.train, exp.split)  # folds.csv exists: read and checked, never made
    views = check_tta(cfg.aug.tta)
    for k, paths in todo:
        fold = exp.fold(k)
        va = folds[folds["fold"] == k]
        if len(va) == 0:
            raise UserError(f"{exp.split.csv} has no validation rows for fold {k}, which has {paths[0]}")
        models = exp.load_models(comp.classes, paths)
        nets = [to_device(m, device, cfg) for m in models]
        outs = model_outputs(cfg, comp, models, nets, va["path"].tolist(), device, f"OOF x TTA {exp.name(fold.dir)}")
        logit_mean = cfg.predict.ensemble == "mean_logit" and models[0].task.head != "regression"
        probs = models[0].task.mix([(m.task.activate(o) if logit_mean else o).double().numpy()
                                    for m, o in zip(models, outs, strict=True)])  # a scale head: the mixture
        oof = prob_frame(va["id"].astype(str).tolist(), probs, models[0].task, comp.targets(va),
                         va["row"].astype(str).tolist() if "row" in va.columns else None)
        csv = write_csv(fold.oof_tta, oof, what="TTA out-of-fold predictions")
        write_json(fold.oof_tta_meta, {"digest": wants[k], "csv_sha256": sha256_file(csv), "views": views,
                                       "n": len(oof)})
        log(f"{exp.name(fold.dir)}: out-of-fold predictions with {len(views)} TTA view(s) "
            f"(mean max output {np.mean(probs.max(1)):.3f}) → {csv}")
