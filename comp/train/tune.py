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

What the next `tune` run does with a trial that did not finish (`_reconcile`, under the tune folder's lock
`.study.lock`, so two processes starting together enqueue the starting config once and each retry once):
- a trial interrupted by SIGTERM/SIGINT (its checkpoint written), or killed (SIGKILL, the OOM killer, a
  preempted machine) is resumed in its own folder from its checkpoints, keeping its attributes (trial 0
  stays "the starting config"). A killed trial is noticed by its folder's lock: the process running a trial
  holds `trial<N>/.trial.lock` (fcntl.flock) while it trains, and the kernel frees it when that process
  dies however it dies, so a RUNNING trial whose lock is free is dead (optuna#485, #2908, #3895); it is
  marked failed and resumed at once, with no heartbeat grace period to wait out. A resumed trial that is
  interrupted again is resumed again, up to MAX_ATTEMPTS runs in all.
- a trial that failed by an error is retried once (a retry that fails too is not), and the retry is
  recorded: the original has a later trial in its folder, so no later run queues it again (optuna#3616).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; killed trials are not noticed there and enqueueing is not locked
    fcntl = None  # type: ignore[assignment]

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


MAX_ATTEMPTS = 5  # runs of one trial's folder in all: a trial killed at the same place each time (the OOM
# killer at one batch size) stops being resumed
STUDY_LOCK = ".study.lock"  # in <out_dir>/tune: held while a run creates, checks and queues the study
TRIAL_LOCK = ".trial.lock"  # in a trial's folder: held by the process training it, "<host> <pid>" inside
LOCK_WAIT_S = 60.0  # a trial folder whose lock stays held this long belongs to a live process


@contextlib.contextmanager
def _locked(path: Path, wait_s: float | None = None) -> Iterator[Any]:
    """The open lock file `path` (created), held with an exclusive fcntl.flock for the block; freed by the
    kernel when this process ends, however it ends. Waits `wait_s` seconds for it (None: as long as it takes).

    Raises:
        UserError: the lock is still held after `wait_s` seconds (another process works in that folder).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        if fcntl is None:
            yield f
            return
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # type: ignore[operator]
                    f.seek(0)
                    raise UserError(f"{path.parent} is in use by another process ({f.read().strip() or '?'} holds "
                                    f"{path.name}); wait for it, or stop it") from None
                time.sleep(0.2)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie not yet reaped counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_dead(trial: Any) -> bool:
    """Whether the process that runs the RUNNING `trial` is gone: the trial holds its folder's lock (it wrote
    its own number as `lock_owner` once it did) and that lock is free now, or held only by orphans of a dead
    process on this machine (DataLoader workers forked before the kill inherit the lock until they notice).
    False when that cannot be told: a trial that has not taken its lock yet, one run by an older kit, or a
    folder this machine does not see (a trial of another machine)."""
    if fcntl is None or trial.user_attrs.get("lock_owner") != trial.number or not trial.user_attrs.get("dir"):
        return False
    path = Path(trial.user_attrs["dir"]) / TRIAL_LOCK
    if not path.is_file():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            host, _, pid = f.read().strip().partition(" ")
            return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _check_study(study: Any, metric: str, direction: str, name: str, storage: str) -> None:
    """Refuse to join a study that optimises another way or another metric (one created by an older kit, which
    maximised every metric, or for another config); record the metric of a new one.

    Raises:
        UserError: the study's direction or metric is not this config's, naming both and the study.
    """
    have = study.direction.name.lower()
    if have != direction:
        raise UserError(f"Optuna study {name!r} ({storage}) was created to {have}, but metric {metric} is "
                        f"{'higher' if direction == 'maximize' else 'lower'} is better; use another --study-name "
                        f"(or delete the study)")
    recorded = study.user_attrs.get("metric")
    if recorded is not None and recorded != metric:
        raise UserError(f"Optuna study {name!r} ({storage}) scores trials by {recorded}, this config by {metric}; "
                        f"use another --study-name")
    if recorded is None:
        study.set_user_attr("metric", metric)


def _reconcile(study: Any, start: dict[str, Any]) -> None:
    """What a run queues before its own trials (module doc), with the study lock held: the starting config on a
    new study; a dead RUNNING trial marked failed (the study's `killed_trials`); each failed trial without a
    later trial in its folder queued again with its params and attributes, resumed from its checkpoints:
    always after an interruption (SIGTERM, a kill) up to MAX_ATTEMPTS, once after an error. The retry records
    `retry_of` (the trial it continues), `attempt` and `errors` (error failures so far in its folder)."""
    import optuna

    state = optuna.trial.TrialState
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(start, user_attrs={"starting_config": True})
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if _is_dead(t):
            log(f"trial {t.number} is RUNNING in the study but its process is gone (killed); it resumes from its "
                f"checkpoints in {t.user_attrs['dir']}")
            study.set_user_attr("killed_trials", [*study.user_attrs.get("killed_trials", []), t.number])
            study.tell(t.number, state=state.FAIL)
    trials = study.get_trials(deepcopy=False)
    killed = set(study.user_attrs.get("killed_trials", []))
    for t in trials:
        folder = t.user_attrs.get("dir")
        if t.state != state.FAIL or not folder or any(u.number > t.number and u.user_attrs.get("dir") == folder
                                                      for u in trials):
            continue  # not failed, failed before training anything, or already retried
        interrupted = t.number in killed or bool(t.user_attrs.get("interrupted"))
        errors = int(t.user_attrs.get("errors", 0)) + (0 if interrupted else 1)
        attempt = int(t.user_attrs.get("attempt", 1)) + 1
        if errors > 1 or attempt > MAX_ATTEMPTS:
            log(f"trial {t.number} ({folder}) is not retried: "
                + ("it failed again after a retry" if errors > 1 else f"{MAX_ATTEMPTS} runs were interrupted"))
            continue
        attrs = {k: v for k, v in t.user_attrs.items() if k not in ("lock_owner", "interrupted", "retried")}
        study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number, "attempt": attempt, "errors": errors})


def tune(config_path: str | None, overrides: list[str], space_path: str | Path, n_trials: int = 20,
         folds: tuple[int, ...] = (0,), study_name: str = "tune", storage: str | None = None) -> TuneResult:
    """Run `n_trials` trials of the study (created, or joined when it exists) and write
    `<out_dir>/tune/best.yaml` and `trials.csv`.

    A trial whose run raises a UserError (a non-finite loss at a high lr, values the config refuses
    together) is recorded as failed (Optuna logs why) and the search goes on; before its own trials the run
    queues the starting config (a new study), resumes interrupted and killed trials and retries failed ones
    once (`_reconcile`).

    Raises:
        UserError: a bad space or config, a study created for another metric or direction, or no completed
            trial in the study.
        Stopped: SIGTERM/SIGINT during a trial (its checkpoint written; the next run resumes it).
    """
    import optuna

    base = load_config(config_path, overrides)
    space = load_space(space_path)
    if n_trials < 1 or not folds:
        raise UserError(f"--trials must be >= 1 and --folds name at least one fold (got {n_trials}, {list(folds)})")
    exp = Experiment(base)
    tune_dir = exp.sub("tune")
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{tune_dir / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if higher_is_better(base.metric) else "minimize"
    start = _starting_params(base, space, Path(space_path))
    with _locked(tune_dir / STUDY_LOCK):  # one process at a time creates, checks and queues (module doc)
        study = optuna.create_study(study_name=study_name, storage=storage, direction=direction,
                                    load_if_exists=True, pruner=optuna.pruners.MedianPruner())
        _check_study(study, base.metric, direction, study_name, storage)
        _reconcile(study, start)

    def objective(trial: Any) -> float:
        values = {k: _suggest(trial, k, spec) for k, spec in space.items()}
        trial_dir = Path(trial.user_attrs.get("dir") or tune_dir / f"trial{trial.number}")
        with _locked(trial_dir / TRIAL_LOCK, LOCK_WAIT_S) as lock:  # held while it trains: `_is_dead`
            lock.seek(0)
            lock.truncate()
            lock.write(f"{socket.gethostname()} {os.getpid()}\n")
            lock.flush()
            trial.set_user_attr("dir", str(trial_dir))
            trial.set_user_attr("lock_owner", trial.number)
            try:
                return train_trial(trial, values, trial_dir)
            except Stopped as e:  # resumed by the next run, whatever its attempt (`_reconcile`)
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
        log(f"trial {trial.number}: {base.metric} {value:.4f} with {values}")
        return value

    study.optimize(objective, n_trials=n_trials, catch=(UserError,), gc_after_trial=True)
    io.write_csv(tune_dir / "trials.csv", study.trials_dataframe())
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise UserError(f"no trial of study {study_name!r} completed (see the errors above and {tune_dir})")
    best = study.best_trial
    starts = [t.value for t in done if t.user_attrs.get("starting_config")]
    start_value = starts[0] if starts else None
    better = "higher" if direction == "maximize" else "lower"
    note = (f"best trial {best.number} of Optuna study {study_name!r} ({storage}): {base.metric} {best.value:.4f} "
            f"({better} is better) on folds {list(folds)}; the starting config scored "
            + (f"{start_value:.4f}" if start_value is not None else "(not completed)"))
    path = io.write_text(tune_dir / "best.yaml", best_config_yaml(config_path, overrides, best.params, note))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    return TuneResult(best_number=best.number, best_value=best.value, best_params=dict(best.params),
                      start_value=start_value, best_yaml=Path(path), n_complete=len(done), n_pruned=len(pruned),
                      higher=direction == "maximize")
