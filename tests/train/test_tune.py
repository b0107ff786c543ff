"""Tuning (comp.train.tune, scripts/tune.py): an Optuna search of three trials, each an ordinary run in its
own folder, the starting config enqueued first, best.yaml written; a bad search space names the key; a
stopped trial is retried in its own folder."""

from __future__ import annotations

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
