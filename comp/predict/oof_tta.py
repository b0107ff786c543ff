"""Out-of-fold predictions made the way test predictions are: each fold's `best.pt` on its own validation
images, averaged over the config's TTA views.

Training writes `fold<K>/oof.csv` from one forward pass per image (no TTA). Test predictions average the
TTA views, which smooths the probabilities and moves the expected grade; kappa cut-points tuned on the
plain OOF are then applied to a differently distributed score. `write_tta_oof` predicts each trained
fold's validation rows (from `<out_dir>/folds.csv`) with `comp.predict.predict.fold_outputs`, the very
loop `predict_test` runs, and writes `fold<K>/oof_tta.csv` in the format of oof.csv (id, label,
prob_<class>...). Each file is reused while its digest, kept in `fold<K>/oof_tta.json`, still matches: the
bytes of the fold's best.pt and folds.csv and every setting that changes the numbers (TTA views,
aug.valid, predict.ensemble, train.amp, the config hash of the model and images).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from comp.config import config_hash, resolve_path
from comp.data.augment import check_tta
from comp.data.competition import Competition, load_competition
from comp.data.folds import folds_path, load_or_make_folds
from comp.device import pick_device
from comp.errors import UserError
from comp.io import sha256_file, write_csv, write_json
from comp.log import log
from comp.predict.predict import fold_norm, fold_outputs, fold_task, load_fold
from comp.train.bag import fold_checkpoints
from comp.train.oof import prob_frame

FILE = "oof_tta.csv"
META = "oof_tta.json"


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


def _fresh(fold_dir: Path, want: str) -> bool:
    """The fold's oof_tta.csv exists, was made with digest `want` and is the file the digest was saved with."""
    try:
        meta = json.loads((fold_dir / META).read_text())
        return meta.get("digest") == want and meta.get("csv_sha256") == sha256_file(fold_dir / FILE)
    except (OSError, ValueError, AttributeError):
        return False


def write_tta_oof(cfg: Any, comp: Competition | None = None, device: torch.device | None = None) -> list[Path]:
    """`fold<K>/oof_tta.csv` for every fold with a `best.pt`, in fold order, made or reused (module doc).

    Each file holds that fold's validation rows of `<out_dir>/folds.csv` in its order: id, label (class
    index), and prob_<class name> = the mean over the TTA views of the softmax (predict.ensemble=mean_prob)
    or the softmax of the mean logits (mean_logit), as one fold of `predict_test` averages them.

    Args:
        comp: the loaded competition (default: loaded from `cfg`); its training images are predicted.
        device: default `pick_device(cfg.device)`.

    Raises:
        UserError: no fold has a best.pt, `<out_dir>/folds.csv` is missing or no longer matches the data, a
            checkpoint does not match the config (see `load_fold`), or a fold has no validation rows.
    """
    out_dir = resolve_path(cfg.out_dir)
    ckpts = [(k, ps) for k in range(cfg.folds.n_folds)
             if (ps := fold_checkpoints(cfg, k)) and all(p.is_file() for p in ps)]  # a seed bag: every seed's
    if not ckpts:
        raise UserError(f"no trained fold in {out_dir} (no fold*/best.pt) to predict the out-of-fold images of")
    split = folds_path(out_dir)
    if not split.is_file():
        raise UserError(f"{split} is missing: the TTA out-of-fold predictions need the split the folds were "
                        f"trained on (set aug.tta=[identity] to fit the cut-points on the plain oof.csv)")
    wants = {k: "".join(digest(p, split, cfg) for p in ps) for k, ps in ckpts}
    fold_dirs = {k: out_dir / f"fold{k}" for k, _ in ckpts}
    todo = [(k, ps) for k, ps in ckpts if not _fresh(fold_dirs[k], wants[k])]
    if todo:
        _predict(cfg, comp or load_competition(cfg), device or pick_device(cfg.device), todo, wants, out_dir)
    return [fold_dirs[k] / FILE for k, _ in ckpts]


def _predict(cfg: Any, comp: Competition, device: torch.device, todo: list[tuple[int, list[Path]]],
             wants: dict[int, str], out_dir: Path) -> None:
    """Each fold's validation images through its model (a seed bag: the mean of its seeds' outputs)."""
    folds = load_or_make_folds(cfg, comp.train, out_dir)  # folds.csv exists: read and checked, never made
    views = check_tta(cfg.aug.tta)
    for k, paths in todo:
        fold_dir = out_dir / f"fold{k}"
        va = folds[folds["fold"] == k]
        if len(va) == 0:
            raise UserError(f"{folds_path(out_dir)} has no validation rows for fold {k}, which has {paths[0]}")
        models, tasks, metas = [], [], []
        for path in paths:
            model, meta = load_fold(path, cfg, comp.classes)
            model = model.to(device)
            if cfg.train.channels_last:
                model = model.to(memory_format=torch.channels_last)
            models.append(model)
            tasks.append(fold_task(meta))
            metas.append(meta)
        outs = fold_outputs(cfg, comp, models, va["path"].tolist(), device, f"OOF x TTA {fold_dir.name}",
                            fold_norm(metas[0]), tasks=tasks)
        logit_mean = cfg.predict.ensemble == "mean_logit" and tasks[0].head != "regression"
        probs = np.mean([(t.activate(o) if logit_mean else o).double().numpy() for t, o in zip(tasks, outs,
                                                                                               strict=True)], 0)
        oof = prob_frame(va["id"].astype(str).tolist(), probs, tasks[0], comp.targets(va),
                         va["row"].astype(str).tolist() if "row" in va.columns else None)
        csv = write_csv(fold_dir / FILE, oof, what="TTA out-of-fold predictions")
        write_json(fold_dir / META, {"digest": wants[k], "csv_sha256": sha256_file(csv), "views": views,
                                     "n": len(oof)})
        log(f"{fold_dir.name}: out-of-fold predictions with {len(views)} TTA view(s) "
            f"(mean max output {np.mean(probs.max(1)):.3f}) → {csv}")
