"""Seed bags (`seeds: [42, 43, 44]`): one recipe trained once per seed on the same folds, read as ONE
experiment.

Layout: each seed's run of fold K in `<out_dir>/fold<K>/seed<S>/` (config.yaml, last.pt, best.pt, oof.csv,
metrics.csv, figures: what a fold folder holds), under the fold folder, beside the bag's own
`<out_dir>/fold<K>/oof.csv`: the per-image mean of the seeds' oof.csv (`write_bag_oof`). Chosen over
`<out_dir>/seed<S>/fold<K>/` because everything that reads an experiment's out-of-fold predictions
(comp.train.oof.cv_table / load_oof, the report, the QWK thresholds, a blend) reads `fold<K>/oof.csv` and
sees the bag unchanged, and `folds.csv` stays in `<out_dir>`, shared by every seed; the readers of
checkpoints go through one place (`fold_checkpoints`, used by comp.predict.predict.trained_folds). With
`seeds` empty nothing changes: fold K trains `seed` into `<out_dir>/fold<K>/`.

The seed sets the initial weights, the sample order, the augmentations, dropout and mixup (comp.train.build,
comp.data.loader), not the split (`folds.seed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from comp import io
from comp.config import resolve_path
from comp.errors import UserError
from comp.log import log
from comp.train.oof import prob_columns


def bag_seeds(cfg: Any) -> list[int]:
    """The seeds of the bag (`seeds`), or [] when there is no bag (just `seed`)."""
    return [int(s) for s in cfg.seeds]


def with_seed(cfg: Any, seed: int) -> Any:
    """A copy of `cfg` training seed `seed` of its bag."""
    return OmegaConf.merge(cfg, {"seed": int(seed)})


def run_dir(cfg: Any, fold: int) -> Path:
    """The folder one training run of fold `fold` writes: `<out_dir>/fold<K>/seed<S>/` (S = cfg.seed) in
    a seed bag, else `<out_dir>/fold<K>/`; a stage before the last of `stages` (cfg.stage = i >= 1) writes
    `stage<i>/` below that (comp.train.stages).

    Raises:
        UserError: a bag whose `seeds` do not include `seed` (the run would belong to no bag)."""
    fold_dir = resolve_path(cfg.out_dir) / f"fold{fold}"
    stage = f"stage{int(cfg.stage)}" if int(cfg.stage) > 0 else ""
    seeds = bag_seeds(cfg)
    if not seeds:
        return fold_dir / stage
    if int(cfg.seed) not in seeds:
        raise UserError(f"seed={cfg.seed} is not one of the bag's seeds={seeds}; train a seed of the bag "
                        f"(scripts/train_fold.py --seed S), or add it to seeds")
    return fold_dir / f"seed{int(cfg.seed)}" / stage


def fold_checkpoints(cfg: Any, fold: int) -> list[Path]:
    """The best.pt files fold `fold` is predicted from: one per seed of the bag in `seeds` order, or the
    fold's own without a bag."""
    fold_dir = resolve_path(cfg.out_dir) / f"fold{fold}"
    seeds = bag_seeds(cfg)
    return [fold_dir / f"seed{s}" / "best.pt" for s in seeds] if seeds else [fold_dir / "best.pt"]


def write_bag_oof(cfg: Any, fold: int) -> Path | None:
    """`<out_dir>/fold<K>/oof.csv` of a seed bag: every seed's oof.csv of the fold averaged image by image
    (the outputs' mean; ids, targets and rows as the seeds share them), written atomically once every seed of
    the bag has one. Returns its path, or None when there is no bag or a seed is still missing (logged).

    Raises:
        UserError: the seeds' OOF files do not hold the same images in the same order (e.g. one was trained
            on another folds.csv)."""
    seeds = bag_seeds(cfg)
    if not seeds:
        return None
    fold_dir = resolve_path(cfg.out_dir) / f"fold{fold}"
    paths = [fold_dir / f"seed{s}" / "oof.csv" for s in seeds]
    missing = [s for s, p in zip(seeds, paths, strict=True) if not p.is_file()]
    if missing:
        log(f"fold {fold}: bag OOF waits for seed(s) {missing} of seeds={seeds}")
        return None
    frames = [pd.read_csv(p, dtype={"id": str}) for p in paths]
    first = frames[0]
    for p, f in zip(paths[1:], frames[1:], strict=True):
        if list(f.columns) != list(first.columns) or not f["id"].equals(first["id"]):
            raise UserError(f"{p} does not hold the images of {paths[0]} in the same order (columns or ids "
                            f"differ); train every seed of the bag on the same folds.csv")
    cols = prob_columns(first)
    out = first.copy()
    out[cols] = np.mean([f[cols].to_numpy(np.float64) for f in frames], axis=0)
    io.write_csv(fold_dir / "oof.csv", out)
    log(f"fold {fold}: bag OOF of {len(seeds)} seeds -> {fold_dir / 'oof.csv'}")
    return fold_dir / "oof.csv"
