"""Seeing and tuning training: TensorBoard tracking (event files read back), the LR finder, the Optuna search."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from comp.errors import UserError
from comp.experiment import load_config
from comp.report.plots import fold_figures
from comp.train.loop import Pruned, fit
from comp.train.tracking import log_figures


def _events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_event_files_hold_steps_epochs_config_and_figures(tiny):
    cfg = load_config(None, tiny["overrides"] + ["epochs=2", "train.log_every=1"])
    result = fit(cfg, 0)
    fold_figures(result["files"], result["metric"])
    log_figures(cfg, result["dir"], [result["dir"] / "curves.png", result["dir"] / "confusion.png"])
    acc = _events(result["dir"] / "tb")
    tags = acc.Tags()
    for col in ("train_loss", "valid_loss", "accuracy", "lr", "images_per_s"):
        assert [e.step for e in acc.Scalars(f"epoch/{col}")] == [0, 1], col
    metrics = pd.read_csv(result["dir"] / "metrics.csv")
    assert [e.value for e in acc.Scalars("epoch/accuracy")] == pytest.approx(metrics["accuracy"].tolist())
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert len(steps) >= 2 and steps == sorted(steps) and len(acc.Scalars("train/lr")) == len(steps)
    assert {"curves", "confusion"} <= set(tags["images"])
    text = " ".join(tags["tensors"])  # add_text is stored as tensors
    assert "config/text_summary" in text and "run/text_summary" in text


def test_tracker_none_writes_nothing_and_missing_package_is_named(tiny, monkeypatch):
    cfg = load_config(None, tiny["overrides"] + ["train.tracker=none", "epochs=3"])
    seen = []

    def on_epoch(epoch, score):  # a pruned trial: fit lets the exception through once epoch 0's files are written
        seen.append((epoch, score))
        raise Pruned("pruned")

    with pytest.raises(Pruned):
        fit(cfg, 0, on_epoch=on_epoch)
    fold_dir = tiny["out"] / "fold0"
    metrics = pd.read_csv(fold_dir / "metrics.csv")
    assert seen == [(0, pytest.approx(metrics["accuracy"].iloc[0]))] and len(metrics) == 1
    assert torch.load(fold_dir / "last.pt", weights_only=True)["epoch"] == 1  # consistent: resumes at epoch 1
    assert not (fold_dir / "tb").exists()
    import builtins

    real = builtins.__import__

    def no_mlflow(name, *a, **k):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    cfg = load_config(None, tiny["overrides"] + ["train.tracker=mlflow", f"out_dir={tiny['out']}2"])
    with pytest.raises(UserError, match=r"train.tracker=mlflow needs the mlflow package: pip install mlflow"):
        fit(cfg, 0)
    with pytest.raises(UserError, match="train.tracker"):
        load_config(None, tiny["overrides"] + ["train.tracker=neptune"])


def test_lr_finder_writes_its_plot_and_suggests_an_lr_within_the_ramp(tiny):
    from comp.train.lr_find import ramp, valley

    # fastai's valley on a hand-made curve: flat, a 9-step fall, then a rise; the longest decreasing run
    # is steps 2..11 (start = 11 - 10 = 1), third = 10/3, so index 1 + 3 + 1 = 5
    losses = np.array([5.0, 5.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.9, 3.0, 9.0])
    assert valley(np.arange(1.0, 15.0), losses) == 6.0
    assert ramp(1e-4, 1.0, 5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])

    code, out, err = run_main("lr_find.py", "--steps", "20", "--start", "1e-5", "--end", "10", *tiny["overrides"],
                              "batch_size=4")
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("optim.lr=")
    lr = float(line.split("=")[1])
    assert 1e-5 <= lr <= 10
    folder = tiny["out"] / "lr_find"
    assert (folder / "lr_find.png").stat().st_size > 1000
    table = pd.read_csv(folder / "lr_find.csv")
    assert 2 <= len(table) <= 20 and table["lr"].is_monotonic_increasing
    assert table["lr"].iloc[0] == pytest.approx(1e-5)
    assert not (tiny["out"] / "fold0").exists()  # nothing in the experiment's fold folders
    assert load_config(None, tiny["overrides"] + [line]).optim.lr == pytest.approx(lr)  # pastes as an override


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
