"""Seeing training (comp.train.tracking): TensorBoard event files read back (steps, epochs, the config, the
figures), tracker none writes nothing, a missing tracker package is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
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
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError, as when absent
    cfg = load_config(None, tiny["overrides"] + ["train.tracker=mlflow", f"out_dir={tiny['out']}2"])
    with pytest.raises(UserError, match=r"train.tracker=mlflow needs the mlflow package: pip install mlflow"):
        fit(cfg, 0)
    with pytest.raises(UserError, match="train.tracker"):
        load_config(None, tiny["overrides"] + ["train.tracker=neptune"])


def _stop_after_first_epoch(epoch, score):
    raise Pruned("stopped after epoch 0")  # fit's files are consistent: last.pt resumes at epoch 1


def test_a_resumed_fold_continues_its_mlflow_run(tiny):
    """KempnerForge#19: after --resume a fold's curves went to a second MLflow run. The real MLflow client
    (mlflow-skinny, its default SQLite store): one run per fold, every epoch in it, once."""
    mlflow = pytest.importorskip("mlflow")
    cfg = load_config(None, tiny["overrides"] + ["train.tracker=mlflow", "epochs=3"])
    with pytest.raises(Pruned):
        fit(cfg, 0, on_epoch=_stop_after_first_epoch)
    fit(cfg, 0, resume=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny['out'] / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(tiny["out"].name).experiment_id])
    assert [r.info.run_name for r in runs] == [f"{tiny['out'].name}/fold0"], "one run for the fold"
    history = client.get_metric_history(runs[0].info.run_id, "epoch_valid_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    ckpt = torch.load(tiny["out"] / "fold0" / "last.pt", weights_only=True)
    assert ckpt["tracker_ids"] == {"mlflow": runs[0].info.run_id}
    assert client.list_artifacts(runs[0].info.run_id)[0].path == "config.yaml"  # under out_dir, not ./mlruns
    assert list((tiny["out"] / "mlartifacts").rglob("config.yaml")) and not Path("mlruns").exists()


class _Wandb:
    """A recording stand-in for the `wandb` package (not installable here): the calls the W&B resume docs
    name, `wandb.util.generate_id()` and `wandb.init(id=..., resume="allow")`."""

    def __init__(self):
        self.inits, self.logged, self.n = [], [], 0
        self.util = self

    def generate_id(self):
        self.n += 1
        return f"run{self.n}"

    def init(self, **kw):
        self.inits.append(kw)
        parent = self

        class _Run:
            id, summary = kw.get("id") or parent.generate_id(), {}

            def log(self, values):
                parent.logged.append((self.id, values))

            def finish(self):
                pass

        return _Run()


def test_a_resumed_fold_continues_its_wandb_run(tiny, monkeypatch):
    fake = _Wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config(None, tiny["overrides"] + ["train.tracker=wandb", "epochs=2"])
    with pytest.raises(Pruned):
        fit(cfg, 0, on_epoch=_stop_after_first_epoch)
    fit(cfg, 0, resume=True)
    assert [(i["id"], i["resume"]) for i in fake.inits] == [("run1", "allow")] * 2
    epochs = [v["epoch"] for run_id, v in fake.logged if "epoch" in v and run_id == "run1"]
    assert epochs == [0, 1] and {run_id for run_id, _ in fake.logged} == {"run1"}
