"""Test predictions: every trained fold × every TTA view → one (N, C) probability array.

Each fold's `best.pt` is loaded with weights_only=True and must match the config's model and data
(the config hash saved in it). TTA views are exact flips/rotations of the batch on the device; the
views and folds are averaged as probabilities (default) or as logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from comp import checkpoint as ckpt_io
from comp.augment import build_transform, check_tta
from comp.cache import image_loader
from comp.competition import Competition
from comp.config import config_hash, resolve_path
from comp.dataset import ImageDataset, make_loader, to_input
from comp.errors import UserError
from comp.models import create_model


def tta_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One TTA view of a (B, C, H, W) batch."""
    if view == "identity":
        return x
    if view == "hflip":
        return x.flip(3)
    if view == "vflip":
        return x.flip(2)
    if view == "hvflip":
        return x.flip(2, 3)
    if view == "rot90":
        return torch.rot90(x, 1, (2, 3))
    if view == "rot270":
        return torch.rot90(x, 3, (2, 3))
    if view == "transpose":
        return x.transpose(2, 3)
    raise UserError(f"aug.tta: unknown view {view!r}")


def trained_folds(cfg: Any) -> list[Path]:
    """The `best.pt` of every fold folder of the experiment, in fold order."""
    out = resolve_path(cfg, cfg.out_dir)
    paths = [out / f"fold{k}" / "best.pt" for k in range(cfg.folds.n_folds)]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise UserError(f"no trained fold in {out} (no fold*/best.pt); run scripts/train_fold.py --fold 0 first")
    return found


def load_fold_model(path: Path, cfg: Any, device: torch.device) -> torch.nn.Module:
    """The model of one fold checkpoint with the weights it was validated with (EMA when kept)."""
    ck = ckpt_io.load(path)
    if ck.get("config_hash") != config_hash(cfg):
        raise UserError(f"{path} was trained with a different model, data or image setting than this config "
                        f"(hash {ck.get('config_hash')} != {config_hash(cfg)})")
    model = create_model(ck["model_name"], ck["num_classes"], in_chans=ck["in_chans"])
    weights = ck["ema"] if ck.get("eval_weights") == "ema" and ck.get("ema") is not None else ck["model"]
    model.load_state_dict(weights)
    return model.to(device).eval()


@torch.no_grad()
def fold_probs(model: torch.nn.Module, loader: Any, cfg: Any, device: torch.device, views: list[str],
               amp_dtype: torch.dtype | None, desc: str) -> np.ndarray:
    """(views, N, C) probabilities (or logits with predict.ensemble=mean_logit) for one fold."""
    outs: list[list[torch.Tensor]] = [[] for _ in views]
    for xb, _ in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        x = to_input(xb, device, cfg.model.in_chans, cfg.train.channels_last)
        for v, view in enumerate(views):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(tta_view(x, view)).float()
            outs[v].append(logits if cfg.predict.ensemble == "mean_logit" else logits.softmax(1))
    return torch.stack([torch.cat(o) for o in outs]).cpu().numpy()


def predict_test(cfg: Any, comp: Competition, device: torch.device | None = None) -> np.ndarray:
    """(N_test, C) class probabilities averaged over every trained fold and TTA view."""
    if len(comp.test) == 0:
        raise UserError(f"no test images found for {cfg.data.root} (data.test_images / data.sample_submission)")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = torch.bfloat16 if device.type == "cuda" and cfg.train.amp else None
    views = check_tta(cfg.aug.tta)
    dataset = ImageDataset(comp.test["path"].tolist(), None, cfg.image_size,
                           build_transform(cfg.aug.valid, "aug.valid"), load=image_loader(cfg, comp))
    loader = make_loader(dataset, cfg.batch_size, None, cfg.num_workers, pin_memory=device.type == "cuda")
    per_fold = []
    for path in trained_folds(cfg):
        model = load_fold_model(path, cfg, device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        per_fold.append(fold_probs(model, loader, cfg, device, views, amp_dtype, desc=f"predict {path.parent.name}"))
    stacked = np.stack(per_fold)  # (folds, views, N, C)
    mean = stacked.mean(axis=(0, 1))
    if cfg.predict.ensemble == "mean_logit":
        mean = torch.softmax(torch.from_numpy(mean), 1).numpy()
    return mean
