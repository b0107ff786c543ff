"""The steps a user runs, one library function each, above every layer: the scripts are thin shells over
these (parse arguments, load the config, call one of them, map user errors to exit code 2), and a notebook
calls the very same functions through the package (`comp.prepare`, `comp.train_fold`), as Lightning's CLI
calls the same `Trainer.fit` a notebook calls.

- `prepare`: data present, every image checked and cached (each stage's own cache too), folds written
  (data.layout=visits: the tables read and checked, folds written; comp.train.tabular).
- `train_fold`: one fold of the experiment, whatever the recipe holds: every seed of a seed bag (or one),
  every stage of a multi-stage recipe, under torchrun (rank 0 fetches the data while the others wait),
  then each run's figures and, once every seed of the fold is trained, the bag's OOF.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from comp.data.cache import cache_folder
from comp.data.download import ensure_data
from comp.data.prepare import prepare as prepare_data
from comp.ensemble.bag import write_bag_oof
from comp.errors import UserError
from comp.experiment import Experiment, stage_configs
from comp.log import log
from comp.report.plots import fold_figures
from comp.train.distributed import setup_distributed
from comp.train.loop import fit
from comp.train.stages import train_stages
from comp.train.tracking import log_figures


def prepare(cfg: Any, workers: int | None = None, download: bool = False, rebuild_cache: bool = False) -> None:
    """Get the data ready for the experiment of `cfg` (comp.data.prepare.prepare: the download when asked,
    every label and image checked, the cache built, the folds written), and the cache of every stage of
    `stages` whose image size or preprocessing differs from the top level's.

    Raises:
        UserError: see comp.data.prepare.prepare.
    """
    if cfg.data.layout == "visits":  # tables only (OSIC): read, checked, folds written (comp.train.tabular)
        from comp.train.tabular import prepare_visits

        ensure_data(cfg, download=download)
        prepare_visits(cfg)
        return
    exp = Experiment(cfg)
    prepare_data(cfg, exp.split, exp.file("image_problems"), workers, download, rebuild_cache)
    done = {cache_folder(cfg)}
    for stage in stage_configs(cfg):  # a stage at another image_size or preprocessing: its own cache
        if stage.images.cache and cache_folder(stage) not in done:
            done.add(cache_folder(stage))
            prepare_data(stage, exp.split, exp.file("image_problems"), workers, rebuild_cache=rebuild_cache)


def train_fold(cfg: Any, fold: int, resume: bool = False, seed: int | None = None) -> list[dict[str, Any]]:
    """Train fold `fold` of the experiment of `cfg`: every seed of `seeds` in turn (or only `seed`), each
    through every stage of `stages` (comp.train.stages), each run from its newest checkpoint with `resume`;
    then, on rank 0, each run's figures (curves.png and the task's: comp.report.plots.fold_figures, also to the
    tracker) and the bag's OOF once every seed of the fold has one (comp.ensemble.bag). Returns each seed's
    result (comp.train.fit's: fold, best, metric, dir, classes, files), in training order.

    Under torchrun, rank 0 checks the data is there (a missing Kaggle download is an error, the demo is built)
    while the other ranks wait.

    Raises:
        UserError: a seed outside the bag, bad data or config, a resume that does not match, a non-finite loss.
        Stopped: SIGTERM/SIGINT arrived during a run; a checkpoint to resume from was written (train again with
            `resume`).
    """
    d = setup_distributed(cfg.device)
    if d.main:
        ensure_data(cfg, download=False)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    exp = Experiment(cfg)
    seeds = exp.seeds
    if seed is not None and seed not in seeds:
        raise UserError(f"--seed {seed} is not a seed of the bag seeds={seeds}; name one of them, or list it in seeds")
    results = []
    for s in [seed] if seed is not None else seeds or [int(cfg.seed)]:
        run_cfg = OmegaConf.merge(cfg, {"seed": int(s)}) if seeds else cfg
        result = train_stages(run_cfg, fold, resume, fit)
        if d.main:
            figures = fold_figures(result["files"], result["metric"])  # curves.png + the task's
            log_figures(run_cfg, result["dir"], list(figures.values()))
            log(f"fold {result['fold']}: best {result['metric']} {result['best']:.4f} -> {result['dir']}")
            write_bag_oof(exp, fold)  # once every seed of the fold's bag is trained (a no-op without a bag)
        results.append(result)
    return results
