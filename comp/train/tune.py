"""Hyperparameter search with Optuna over config keys: the space in YAML, each trial an ordinary run.

A space file maps dotted config keys to a distribution (Optuna's `suggest_float` / `suggest_int` /
`suggest_categorical`):

    optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # float (log scale)
    model.drop_rate: {low: 0.0, high: 0.5}                 # float
    model.freeze_epochs: {low: 0, high: 3, step: 1}        # an int key (the schema's type): integers
    optim.name: {choices: [adamw, sgd]}                    # categorical

The objective is the best validation score of the competition metric on the given folds, their mean when
several, optimised in the metric's direction (`comp.metrics.higher_is_better`: a maximising study for AUC or
kappa, a minimising one for MAE, RMSE or log loss, optuna-examples#31); each epoch's score is reported to
Optuna and a trial the pruner (MedianPruner, in the study's direction: worse than the median of earlier trials
at the same epoch) stops ends through `fit(on_epoch=...)` raising `Pruned`, its files consistent. The
starting config is enqueued first (`study.enqueue_trial`), so "best trial vs starting config" is an honest
comparison. The study lives in an RDB storage (SQLite by default, `<out_dir>/tune/study.db`,
`load_if_exists`), so processes on several machines or GPUs can work on one study; each trial trains in
`<out_dir>/tune/trial<N>`.

A trial interrupted (SIGTERM, Ctrl-C) or killed (SIGKILL, the OOM killer) is resumed in its folder by the
next run, a failed one retried once, the starting config enqueued once however many runs start together
(comp.train.trials).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from comp import io
from comp.config import DEFAULT_CONFIG, Config
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.log import log
from comp.metrics import higher_is_better
from comp.train.loop import Pruned, Stopped, fit
from comp.train.lr_find import copy_folds
from comp.train.stages import train_stages
from comp.train.trials import LOCK_WAIT_S, STUDY_LOCK, TRIAL_LOCK, check_study, claim, locked, reconcile


@dataclass
class TuneResult:
    """The study's outcome: its best trial against the starting config's (trial 0)."""

    best_number: int
    best_value: float
    best_params: dict[str, Any]
    start_value: float | None  # None when the starting config's trial did not complete (failed, pruned)
    best_yaml: Path
    n_complete: int
    n_pruned: int
    higher: bool = True  # the metric's direction: whether a larger value is better

    @property
    def improved(self) -> bool:
        """Whether the best trial beats the starting config in the metric's direction (False when the starting
        config did not complete)."""
        if self.start_value is None:
            return False
        return self.best_value > self.start_value if self.higher else self.best_value < self.start_value


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a search space: {dotted config key: {low, high[, log][, step]} or {choices: [...]}}.

    Raises:
        UserError: the file is missing or not a YAML mapping, a key is not a config key, or a range is not
            one of the forms above (naming the file and the key).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        space = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"search space {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise UserError(f"search space {path} must map config keys to ranges, e.g. 'optim.lr: {{low: 1e-4, high: "
                        f"1e-2, log: true}}'")
    schema = OmegaConf.structured(Config)
    for key, spec in space.items():
        where = f"search space {path}: {key!r}"
        if not isinstance(key, str) or OmegaConf.select(schema, key, default="<missing>") == "<missing>":
            raise UserError(f"{where} is not a config key (see docs/config.md)")
        if not isinstance(spec, dict):
            raise UserError(f"{where} must be {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UserError(f"{where}: choices must be a non-empty list, alone, got {spec!r}")
            continue
        extra = set(spec) - {"low", "high", "log", "step"}
        nums = [spec.get(k) for k in ("low", "high") + (("step",) if "step" in spec else ())]
        if extra or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
            raise UserError(f"{where} must be {{low, high[, log, step]}} with numbers, or {{choices: [...]}}, "
                            f"got {spec!r}")
        if not spec["low"] < spec["high"] or spec.get("log") and spec["low"] <= 0:
            raise UserError(f"{where}: needs low < high (and low > 0 with log: true), got {spec!r}")
        if _is_int_key(key) and not all(isinstance(v, int) for v in nums):
            raise UserError(f"{where} is an integer key: low, high (and step) must be integers, got {spec!r}")
    return space


def _is_int_key(key: str) -> bool:
    """Whether the schema types `key` as an integer (its default is an int, not a bool)."""
    value = OmegaConf.select(OmegaConf.structured(Config), key)
    return isinstance(value, int) and not isinstance(value, bool)


def _suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    """One value of `key` from `trial`: an int for a key the schema types as int, else a float (or a choice)."""
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    low, high, step, log_ = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    if _is_int_key(key):
        return trial.suggest_int(key, low, high, step=step or 1, log=log_)
    return trial.suggest_float(key, float(low), float(high), step=step, log=log_)


def _starting_params(cfg: Any, space: dict[str, dict[str, Any]], path: Path) -> dict[str, Any]:
    """The starting config's value of every searched key (trial 0), checked against its choices."""
    params = {}
    for key, spec in space.items():
        value = OmegaConf.select(cfg, key)
        if "choices" in spec and value not in spec["choices"]:
            raise UserError(f"search space {path}: {key!r}: the starting config's value {value!r} is not among the "
                            f"choices {spec['choices']}; add it, so that trial 0 runs the starting config")
        params[key] = value
    return params


def _override(key: str, value: Any) -> str:
    """A KEY=VALUE override that reads back as `value` (floats in repr, so 1e-05 stays a float)."""
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def best_config_yaml(config_path: str | Path | None, overrides: list[str], params: dict[str, Any], note: str) -> str:
    """The base YAML file with the command line's overrides and then `params` merged in, as YAML text (a
    `# note` first): what `train_fold.py --config` takes. Only the keys the file or the search set appear."""
    conf = OmegaConf.load(Path(config_path).expanduser() if config_path else DEFAULT_CONFIG)
    conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
    for key, value in params.items():
        OmegaConf.update(conf, key, value, force_add=True)
    return "".join(f"# {line}\n" for line in note.splitlines()) + OmegaConf.to_yaml(conf)


def tune(config_path: str | None, overrides: list[str], space_path: str | Path, n_trials: int = 20,
         folds: tuple[int, ...] = (0,), study_name: str = "tune", storage: str | None = None) -> TuneResult:
    """Run `n_trials` trials of the study (created, or joined when it exists) and write its `best.yaml` and
    `trials.csv`. The study's folder is `<out_dir>/tune` for the default study name `tune`, else
    `<out_dir>/tune/<study_name>`: its trials train in `trial<N>` there, so two studies in one out_dir never
    share a trial's folder (nor read each other's checkpoints as their own).

    A trial whose run raises a UserError (a non-finite loss at a high lr, values the config refuses
    together) is recorded as failed (Optuna logs why) and the search goes on; before its own trials the run
    queues the starting config (a new study), resumes interrupted and killed trials and retries failed ones
    once (comp.train.trials.reconcile).

    Raises:
        UserError: a bad space or config, a study name that is not a plain folder name, a study created for
            another metric or direction, or no completed trial in the study.
        Stopped: SIGTERM/SIGINT during a trial (its checkpoint written; the next run resumes it).
    """
    import optuna

    base = load_config(config_path, overrides)
    space = load_space(space_path)
    if n_trials < 1 or not folds:
        raise UserError(f"--trials must be >= 1 and --folds name at least one fold (got {n_trials}, {list(folds)})")
    if not study_name or study_name in (".", "..") or any(c in study_name for c in "/\\"):
        raise UserError(f"--study-name {study_name!r}: must be a plain folder name (its trials train in it)")
    exp = Experiment(base)
    tune_dir = exp.sub("tune")
    study_dir = tune_dir if study_name == "tune" else tune_dir / study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{tune_dir / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if higher_is_better(base.metric) else "minimize"
    start = _starting_params(base, space, Path(space_path))
    with locked(tune_dir / STUDY_LOCK):  # one process at a time creates, checks and queues (comp.train.trials)
        study = optuna.create_study(study_name=study_name, storage=storage, direction=direction,
                                    load_if_exists=True, pruner=optuna.pruners.MedianPruner())
        check_study(study, base.metric, direction, study_name, storage)
        reconcile(study, start)

    def objective(trial: Any) -> float:
        values = {k: _suggest(trial, k, spec) for k, spec in space.items()}
        trial_dir = Path(trial.user_attrs.get("dir") or study_dir / f"trial{trial.number}")
        with locked(trial_dir / TRIAL_LOCK, LOCK_WAIT_S) as lock:  # held while it trains (trials.is_dead)
            claim(lock)
            trial.set_user_attr("dir", str(trial_dir))
            trial.set_user_attr("lock_owner", trial.number)
            try:
                return train_trial(trial, values, trial_dir)
            except Stopped as e:  # resumed by the next run (trials.reconcile)
                trial.set_user_attr("interrupted", f"signal {e.signum}")
                raise

    def train_trial(trial: Any, values: dict[str, Any], trial_dir: Path) -> float:
        cfg = load_config(config_path, [*overrides, *(_override(k, v) for k, v in values.items()),
                                        f"out_dir={trial_dir}"])
        trial_exp = Experiment(cfg)
        copy_folds(exp.split, trial_exp.split)
        scores = []
        for i, fold in enumerate(folds):
            def on_epoch(epoch: int, score: float, i: int = i, fold: int = fold) -> None:
                trial.report(score, i * cfg.epochs + epoch)
                if trial.should_prune():
                    raise Pruned(f"trial {trial.number} pruned at fold {fold} epoch {epoch} ({score:.4f})")

            resume = trial_exp.run_of(cfg, fold).started() or bool(cfg.stages)  # stages: each its own
            try:
                result = train_stages(cfg, fold, resume, fit, on_epoch=on_epoch)
            except Pruned as e:
                log(str(e))
                raise optuna.TrialPruned(str(e)) from None
            scores.append(result["best"])
            trial.set_user_attr(f"fold{fold}", result["best"])
        value = float(sum(scores) / len(scores)) if scores else math.nan
        log(f"trial {trial.number} ({trial_dir}): {base.metric} {value:.4f} with {values}")
        return value

    study.optimize(objective, n_trials=n_trials, catch=(UserError,), gc_after_trial=True)
    io.write_csv(study_dir / "trials.csv", study.trials_dataframe())
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise UserError(f"no trial of study {study_name!r} completed (see the errors above and {study_dir})")
    best = study.best_trial
    starts = [t.value for t in done if t.user_attrs.get("starting_config")]
    start_value = starts[0] if starts else None
    better = "higher" if direction == "maximize" else "lower"
    note = (f"best trial {best.number} of Optuna study {study_name!r} ({storage}): {base.metric} {best.value:.4f} "
            f"({better} is better) on folds {list(folds)}; the starting config scored "
            + (f"{start_value:.4f}" if start_value is not None else "(not completed)"))
    path = io.write_text(study_dir / "best.yaml", best_config_yaml(config_path, overrides, best.params, note))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    return TuneResult(best_number=best.number, best_value=best.value, best_params=dict(best.params),
                      start_value=start_value, best_yaml=Path(path), n_complete=len(done), n_pruned=len(pruned),
                      higher=direction == "maximize")
