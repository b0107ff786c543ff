"""Multi-stage recipes (`stages:`): the stage configs of comp.experiment.stage_configs trained in order for
one fold, each stage starting from the previous stage's best.pt (`model.pretrained`, read by
comp.models.weights like any local checkpoint: the kit's own, its EMA weights when it validated them).

Stages 1..n-1 write the `stage<i>/` folders below the run's folder (comp.experiment.layout; their
config.yaml, checkpoints, metrics.csv, sources.json, and done.json once finished); the last stage writes the
run's folder itself, so prediction, the OOF readers, the report and a blend read the final stage with no
change. `data.extra` entries with `stage: pretrain` are used in stages 1..n-1 only; `stage: all` (the
default) in every stage. Resuming skips every stage whose done.json exists, resumes the first unfinished
one from its own checkpoints and starts the later ones fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from comp import io
from comp.errors import UserError
from comp.experiment import Experiment, stage_configs
from comp.log import log


def train_stages(cfg: Any, fold: int, resume: bool, fit: Callable[..., dict[str, Any]],
                 **fit_kwargs: Any) -> dict[str, Any]:
    """Train every stage of fold `fold` in order with `fit(cfg, fold, resume=..., **fit_kwargs)`
    (comp.train.fit) and return the last stage's result. Without stages: one fit of `cfg`.

    Raises:
        UserError: a stage folder already trained without `resume` (build_run), or a bad stage config.
        Stopped: a stage was interrupted (rerun with --resume continues that stage)."""
    configs = stage_configs(cfg)
    if len(configs) == 1:
        return fit(configs[0], fold, resume=resume, **fit_kwargs)
    exp = Experiment(cfg)
    result: dict[str, Any] = {}
    prev: Path | None = None
    n = len(configs)
    for i, c in enumerate(configs, start=1):
        if prev is not None:
            c = OmegaConf.merge(c, {"model": {"pretrained": str(prev)}})
        files = exp.run_of(c, fold)
        if i < n and files.done.is_file():
            log(f"fold {fold} stage {i}/{n}: done ({files.done}), skipped")
            prev = files.best
            continue
        again = resume and files.started()
        log(f"fold {fold} stage {i}/{n}: {'resuming' if again else 'training'} into {files.dir}")
        result = fit(c, fold, resume=again, **fit_kwargs)
        if i < n:
            if not files.trained():
                raise UserError(f"stage {i} of fold {fold} left no {files.best.name} in {files.dir}; stage {i + 1} "
                                f"starts from it")
            io.write_json(files.done, {"stage": i, "of": n, "best": result.get("best"), "metric": result.get("metric"),
                                       "best_pt": str(files.best)})
        prev = files.best
    return result
