"""Image embeddings for stacking or a user's own model (`scripts/predict.py --save-features DIR`).

Each fold's model gives its pooled features (timm's `forward_head(forward_features(x), pre_logits=True)`,
the input of its classifier) through the kit's one forward loop (comp.models.inference.forward_views via
`fold_outputs(features=True)`), averaged over the config's TTA views as the outputs are:
- train, out of fold: fold k's model on fold k's validation images (`folds.csv`), so no row was seen by
  the model that embedded it; `train.npy` (N_train, D) float32 and `train_ids.csv` (id, fold), rows in
  the same order;
- test: every fold's model on every test image, `test_fold<K>.npy` (N_test, D) float32 per fold, rows in
  `test_ids.csv` (id) order (`comp.test`'s).
`.npy` (numpy's format, read with `np.load`) rather than Parquet: pyarrow is not a dependency of the kit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from comp import io
from comp.data.competition import Competition
from comp.device import pick_device
from comp.errors import UserError
from comp.experiment import Experiment
from comp.log import log
from comp.predict.predict import model_outputs, to_device


def check_features_dir(path: str | Path) -> Path:
    """A --save-features folder that can be written (`save_features` makes it if missing; its parent must
    exist), checked before any inference; makes nothing.

    Raises:
        UserError: a file in the way, a parent that does not exist, or a folder not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--save-features {path}: it is a file; name a folder")
    if not path.parent.is_dir():
        raise UserError(f"--save-features {path}: folder {path.parent} does not exist")
    return io.check_dir(path, "--save-features")


def save_features(exp: Experiment | Any, comp: Competition, out: str | Path, device: torch.device | None = None
                  ) -> dict[str, np.ndarray]:
    """Write every trained fold's embeddings (module doc) to `out` and return them by file stem
    (`train`, `test_fold<K>`).

    Raises:
        UserError: no trained fold, a fold that does not match the config, no folds.csv, or an unwritable
            folder.
    """
    exp = Experiment.of(exp)
    cfg = exp.cfg
    out = check_features_dir(out)
    if len(cfg.seeds) > 1:
        raise UserError(f"--save-features: the seeds of a bag {list(cfg.seeds)} embed images in different spaces; "
                        f"save one seed's features with seeds=[{cfg.seeds[0]}]")
    device = device or pick_device(cfg.device)
    models = exp.load_models(comp.classes)
    fpath = exp.split.csv
    if not fpath.is_file():
        raise UserError(f"--save-features: {fpath} is missing; the folds were trained from it")
    folds = pd.read_csv(fpath, dtype={"id": str})
    where = dict(zip(comp.train["id"].astype(str), comp.train["path"], strict=True))
    out.mkdir(exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    train_parts, id_parts = [], []
    nets = []
    for m in models:
        net = to_device(m, device, cfg)
        k = exp.fold_of(m.path)
        ids = [i for i in folds.loc[folds["fold"] == k, "id"] if i in where]
        feats = model_outputs(cfg, comp, [m], [net], [where[i] for i in ids], device,
                              f"features {exp.name(m.path)} (OOF)", features=True)[0]
        train_parts.append(feats.numpy().astype(np.float32))
        id_parts.append(pd.DataFrame({"id": ids, "fold": k}))
        nets.append(net)
    arrays["train"] = np.concatenate(train_parts)
    io.save_npy(out / "train.npy", arrays["train"], what="--save-features")
    io.write_csv(out / "train_ids.csv", pd.concat(id_parts, ignore_index=True), what="--save-features")
    if len(comp.test):
        test = model_outputs(cfg, comp, models, nets, comp.test["path"].tolist(), device,
                             f"features {len(models)} fold(s) (test)", features=True)
        for m, feats in zip(models, test, strict=True):
            name = f"test_fold{exp.fold_of(m.path)}"
            arrays[name] = feats.numpy().astype(np.float32)
            io.save_npy(out / f"{name}.npy", arrays[name], what="--save-features")
        io.write_csv(out / "test_ids.csv", comp.test[["id"]], what="--save-features")
    log(f"features: {arrays['train'].shape[0]} train (OOF) and {len(comp.test)} test image(s) x "
        f"{arrays['train'].shape[1]} dims from {len(models)} fold(s) in {out}")
    return arrays
