"""Tuning (comp.train.tune, scripts/tune.py): an Optuna search of three trials, each an ordinary run in its
own folder, the starting config enqueued first, best.yaml written; a bad search space names the key; a
stopped trial is retried in its own folder."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_main

from comp.errors import UserError
from comp.experiment import load_config


def test_optuna_search_three_trials_writes_best_yaml(tiny, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "model.drop_rate: {low: 0.0, high: 0.5}\n"
                     "optim.name: {choices: [adamw, sgd]}\n"
                     "model.freeze_epochs: {low: 0, high: 1, step: 1}\n")
    code, out, err = run_main("tune.py", "--space", str(space), "--trials", "3", *tiny["overrides"])
    assert code == 0, err
    tune_dir = tiny["out"] / "tune"
    assert "3 trials completed" in err and "vs the starting config's" in err, err
    import optuna

    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}")
    assert len(study.trials) == 3
    start = study.trials[0]  # the starting config, enqueued: the demo's own values
    base = load_config(None, tiny["overrides"])
    assert start.user_attrs["starting_config"] and start.params["optim.lr"] == pytest.approx(base.optim.lr)
    assert start.params["optim.name"] == base.optim.name
    assert start.params["model.freeze_epochs"] == base.model.freeze_epochs
    assert isinstance(study.trials[1].params["model.freeze_epochs"], int)
    best = study.best_trial
    assert f"best trial {best.number} {best.value:.4f}" in err
    assert f"starting config's {start.value:.4f}" in err
    for t in study.trials:  # each an ordinary run in its own folder, with the sampled values
        saved = load_config(tune_dir / f"trial{t.number}" / "fold0" / "config.yaml")
        assert saved.optim.lr == pytest.approx(t.params["optim.lr"]) and saved.optim.name == t.params["optim.name"]
        assert (tune_dir / f"trial{t.number}" / "fold0" / "metrics.csv").is_file()
    cfg = load_config(tune_dir / "best.yaml")
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"]) and cfg.image_size == 16
    assert cfg.model.drop_rate == pytest.approx(best.params["model.drop_rate"])
    assert len(pd.read_csv(tune_dir / "trials.csv")) == 3


def test_bad_search_space_names_the_key(tiny, tmp_path):
    from comp.train.tune import load_space

    bad = tmp_path / "bad.yaml"
    for text, needle in [("optim.lrr: {low: 1, high: 2}\n", "'optim.lrr' is not a config key"),
                         ("optim.lr: {low: 2, high: 1}\n", "needs low < high"),
                         ("optim.lr: {low: 0, high: 1, log: true}\n", "low > 0"),
                         ("optim.name: {choices: []}\n", "non-empty list"),
                         ("train.early_stop: {low: 0, high: 2.5}\n", "integer key")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=needle):
            load_space(bad)


def test_a_stopped_trial_is_retried_in_its_own_folder(tiny, tmp_path, monkeypatch):
    import signal

    import optuna

    import comp.train.tune as tune_mod
    from comp.train import Stopped

    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")

    def stopped(cfg, fold, resume=False, on_epoch=None):
        raise Stopped(signal.SIGTERM, tiny["out"] / "x")

    monkeypatch.setattr(tune_mod, "fit", stopped)
    with pytest.raises(Stopped):
        tune_mod.tune(None, tiny["overrides"], space, n_trials=1)
    monkeypatch.undo()
    result = tune_mod.tune(None, tiny["overrides"], space, n_trials=1)  # retries trial 0, the starting config
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tiny['out'] / 'tune' / 'study.db'}")
    first, retry = study.trials
    assert first.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.user_attrs["dir"] == str(tiny["out"] / "tune" / "trial0") and retry.params == first.params
    assert result.start_value == retry.value and result.best_number == 1


# --- the metric's direction, retries, concurrent starts and killed trials (issue: tuning and scores) ---------

SPACE = "optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"


def _bone_age(tmp_path):
    """A bone-age style regression scored by MAE (lower is better), and its space file."""
    from helpers import FAST, write_competition

    over = [*FAST, *write_competition(tmp_path / "data", "regression"), "metric=mae", "data.source=competition",
            f"out_dir={tmp_path / 'runs'}"]
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return over, space, tmp_path / "runs" / "tune"


def _study(tune_dir):
    import optuna

    return optuna.load_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}")


def test_a_lower_is_better_metric_is_minimised_and_pruned_the_right_way(tmp_path, monkeypatch):
    """optuna-examples#31, optuna#2733: with metric mae a trial of MAE 1.03e11 was "an improvement" over the
    starting config's 59.89 and written to best.yaml, and the pruner stopped the good trials. Training is
    replaced by a score: the starting config's MAE 59.89, each later trial worse than all before it."""
    import itertools

    import optuna

    import comp.train.tune as tune_mod

    over, space, tune_dir = _bone_age(tmp_path)
    start_lr, runs = load_config(None, over).optim.lr, itertools.count()

    def fit(cfg, fold, resume=False, on_epoch=None):
        k = next(runs)
        mae = 59.89 if k == 0 and cfg.optim.lr == start_lr else 1.03e11 * k
        for epoch in range(3):
            on_epoch(epoch, mae + 10 * (2 - epoch))
        return {"best": mae}

    monkeypatch.setattr(tune_mod, "fit", fit)
    code, out, err = run_main("tune.py", "--space", str(space), "--trials", "3", *over)
    assert code == 0, err
    assert "best trial 0 59.8900 vs the starting config's 59.8900 (lower is better): no improvement" in err, err
    study = _study(tune_dir)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.user_attrs["metric"] == "mae"
    assert load_config(tune_dir / "best.yaml").optim.lr == pytest.approx(start_lr)
    assert "(lower is better)" in (tune_dir / "best.yaml").read_text()
    tune_mod.tune(None, over, space, n_trials=3)  # past MedianPruner's 5 startup trials: each new one is worse
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 5 + [optuna.trial.TrialState.PRUNED], states
    assert study.best_trial.number == 0


def test_a_study_of_another_direction_or_metric_is_refused(tmp_path):
    """A study an older kit created (maximising every metric) is not joined by a MAE config: its best trial would
    be the worst one."""
    import optuna

    from comp.train.tune import tune

    over, space, tune_dir = _bone_age(tmp_path)
    tune_dir.mkdir(parents=True)
    optuna.create_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}", direction="maximize")
    with pytest.raises(UserError, match="was created to maximize, but metric mae is lower is better"):
        tune(None, over, space, n_trials=1)
    optuna.delete_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}")
    study = optuna.create_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}", direction="minimize")
    study.set_user_attr("metric", "mae")
    with pytest.raises(UserError, match="scores trials by mae, this config by rmse"):
        tune(None, [*over, "metric=rmse"], space, n_trials=1)


def test_a_failed_trial_is_retried_once_and_never_queued_again(tiny, tmp_path, monkeypatch):
    """optuna#3616, #982: the retry marked only itself, so every later run queued the failed original again and
    spent its budget on the same failure."""
    import comp.train.tune as tune_mod

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)

    def fails(cfg, fold, resume=False, on_epoch=None):
        raise UserError("loss is nan")

    monkeypatch.setattr(tune_mod, "fit", fails)
    for _ in range(5):
        with pytest.raises(UserError, match="no trial of study 'tune' completed"):
            tune_mod.tune(None, tiny["overrides"], space, n_trials=1)
    trials = _study(tiny["out"] / "tune").trials
    folders = [t.user_attrs["dir"] for t in trials]
    # each failed trial once more in its folder (trial 0, then the new trial 2), then a new trial: never a third
    assert folders == [str(tiny["out"] / "tune" / f"trial{n}") for n in (0, 0, 2, 2, 4)], folders
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, 0, None, 2, None]
    assert trials[1].user_attrs["starting_config"] and trials[1].params == trials[0].params


@pytest.mark.parametrize("storage", ["new", "existing"])
def test_two_runs_starting_together_enqueue_the_starting_config_once(tiny, tmp_path, monkeypatch, storage):
    """Two tune.py on one new study: each created or loaded it and, seeing no trial, enqueued the starting
    config, so it ran twice (and in a new study.db both created its tables: "table studies already exists").
    Both threads are held right after create_study until the other arrives (or 1 s has passed, when the lock
    keeps the other out), the widest the race can be."""
    import threading

    import optuna

    import comp.train.tune as tune_mod

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    if storage == "existing":  # the tables made, no study yet
        (tiny["out"] / "tune").mkdir(parents=True)
        optuna.storages.RDBStorage(f"sqlite:///{tiny['out'] / 'tune' / 'study.db'}")
    monkeypatch.setattr(tune_mod, "fit", lambda cfg, fold, resume=False, on_epoch=None: {"best": cfg.optim.lr})
    both = threading.Barrier(2)
    create = optuna.create_study

    def create_then_wait(*args, **kwargs):
        study = create(*args, **kwargs)
        try:
            both.wait(timeout=1.0)
        except threading.BrokenBarrierError:
            pass
        return study

    monkeypatch.setattr(optuna, "create_study", create_then_wait)
    errors = []

    def run():
        try:
            tune_mod.tune(None, tiny["overrides"], space, n_trials=1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    trials = _study(tiny["out"] / "tune").trials
    assert len(trials) == 2 and [t.user_attrs.get("starting_config", False) for t in trials].count(True) == 1


KILLED_RUN = """
import os, signal, sys
import comp.train.tune as tune_mod
real_fit = tune_mod.fit
def fit(cfg, fold, resume=False, on_epoch=None):
    def then_kill(epoch, score):
        on_epoch(epoch, score)
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a preempted machine: no handler runs
    return real_fit(cfg, fold, resume=resume, on_epoch=then_kill)
tune_mod.fit = fit
tune_mod.tune(None, sys.argv[2:], sys.argv[1], n_trials=1)
"""


def test_a_killed_trial_is_resumed_from_its_checkpoints_and_stays_the_starting_config(tiny, tmp_path):
    """optuna#485, #2908, #3895: a trial whose process was SIGKILLed stayed RUNNING for ever, its last.pt never
    resumed, and as trial 0 the "best vs the starting config" line was lost. The process kills itself with
    SIGKILL after epoch 0's files are written, inside the trial."""
    import signal

    import optuna
    from faults import start

    from comp.train.tune import tune

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    over = [*tiny["overrides"], "epochs=2"]
    proc = start(KILLED_RUN, str(space), *over, log=tmp_path / "killed.log")
    assert proc.wait(120) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    fold = tiny["out"] / "tune" / "trial0" / "fold0"
    assert (fold / "last.pt").is_file() and _study(tiny["out"] / "tune").trials[0].state.name == "RUNNING"

    result = tune(None, over, space, n_trials=1)
    killed, resumed = _study(tiny["out"] / "tune").trials
    assert killed.state == optuna.trial.TrialState.FAIL and resumed.state == optuna.trial.TrialState.COMPLETE
    assert resumed.user_attrs["dir"] == str(tiny["out"] / "tune" / "trial0") and resumed.params == killed.params
    assert resumed.user_attrs["starting_config"] and resumed.user_attrs["retry_of"] == 0
    assert pd.read_csv(fold / "metrics.csv")["epoch"].tolist() == [0, 1]  # epoch 0 from the killed run, not again
    assert result.start_value == resumed.value and _study(tiny["out"] / "tune").user_attrs["killed_trials"] == [0]


def test_a_running_trial_whose_lock_is_held_is_alive(tmp_path):
    """No false alarm: a trial whose folder lock another process (here: another open file) holds is alive,
    unless that holder is a process of this machine that is gone (orphaned DataLoader workers holding it)."""
    import socket
    import subprocess
    import sys

    import optuna

    from comp.train.trials import TRIAL_LOCK, is_dead, locked

    study = optuna.create_study()
    trial = study.ask()
    folder = tmp_path / "trial0"
    trial.set_user_attr("dir", str(folder))
    assert not is_dead(study.trials[0])  # it has not taken its lock yet: unknown, alive
    trial.set_user_attr("lock_owner", 0)
    with locked(folder / TRIAL_LOCK) as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
        f.flush()
        assert not is_dead(study.trials[0])
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # reaped: its pid names no process now
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} {gone.pid}\n")
        f.flush()
        assert is_dead(study.trials[0])  # held, but by orphans of a process that is gone
        f.seek(0)
        f.truncate()
        f.write(f"another-machine {gone.pid}\n")
        f.flush()
        assert not is_dead(study.trials[0])  # another machine's process: cannot tell, alive
    assert is_dead(study.trials[0])  # the lock is free: its process is gone


def test_two_studies_in_one_out_dir_train_in_their_own_folders(tiny, tmp_path, monkeypatch):
    """A second --study-name in the same out_dir trained nothing: its trial 0 found the first study's
    tune/trial0 trained, took its score as its own and wrote best.yaml from it (new-user check)."""
    import comp.train.tune as tune_mod

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    seen = []

    def fit(cfg, fold, resume=False, on_epoch=None):  # the score follows the trial's own lr
        seen.append((Path(cfg.out_dir), resume))
        return {"best": float(cfg.optim.lr), "metric": cfg.metric}

    monkeypatch.setattr(tune_mod, "fit", fit)
    first = tune_mod.tune(None, tiny["overrides"], space, n_trials=1)
    second = tune_mod.tune(None, [*tiny["overrides"], "optim.lr=0.09"], space, n_trials=1, study_name="other")
    tune_dir = tiny["out"] / "tune"
    assert [d for d, _ in seen] == [tune_dir / "trial0", tune_dir / "other" / "trial0"]
    assert first.best_yaml == tune_dir / "best.yaml" and second.best_yaml == tune_dir / "other" / "best.yaml"
    assert second.start_value == pytest.approx(0.09) != first.start_value
    with pytest.raises(UserError, match="plain folder name"):
        tune_mod.tune(None, tiny["overrides"], space, n_trials=1, study_name="../x")
