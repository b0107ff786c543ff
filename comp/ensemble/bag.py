"""Seed bags (`seeds: [42, 43, 44]`): one recipe trained once per seed on the same folds, read as ONE
experiment.

Each seed's run of fold K lives in the fold's folder (comp.experiment.layout: `fold<K>/seed<S>/`, with what a
run folder holds), beside the bag's own OOF of the fold: the per-image mean of the seeds' OOF (`write_bag_oof`).
Everything that reads an experiment's out-of-fold predictions (its CV, the report, the decoding, a blend)
reads the fold's OOF and sees the bag unchanged, and folds.csv stays the experiment's, shared by every seed;
prediction ensembles every seed of every fold (comp.experiment.Experiment.checkpoints). With `seeds` empty
nothing changes: fold K trains `seed` into its fold folder.

The seed sets the initial weights, the sample order, the augmentations, dropout and mixup (comp.train.build,
comp.data.loader), not the split (`folds.seed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io, likelihood
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.oof import prob_columns
from comp.log import log


def write_bag_oof(exp: Experiment | Any, fold: int) -> Path | None:
    """The OOF of fold `fold` of a seed bag: every seed's OOF of the fold averaged image by image (the outputs'
    mean; a value with its sigma: the mixture, comp.likelihood; ids, targets and rows as the seeds share them),
    written atomically once every seed of the bag has one. Returns its path, or None when there is no bag or a
    seed is still missing (logged).

    Raises:
        UserError: the seeds' OOF files do not hold the same images in the same order (e.g. one was trained
            on another folds.csv)."""
    exp = Experiment.of(exp)
    seeds = exp.seeds
    if not seeds:
        return None
    paths = [r.oof for r in exp.runs(fold)]
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
    seeds_out = [f[cols].to_numpy(np.float64) for f in frames]
    out[cols] = likelihood.mix(seeds_out) if "sigma" in cols else np.mean(seeds_out, axis=0)  # sigma: the mixture
    target = exp.fold(fold).oof
    io.write_csv(target, out)
    log(f"fold {fold}: bag OOF of {len(seeds)} seeds -> {target}")
    return target
