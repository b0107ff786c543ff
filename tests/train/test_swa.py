"""Checkpoint averaging (train.swa_epochs, comp.train.swa): the average is the mean of the last epochs'
weights, its BatchNorm statistics are recomputed over the kit's training inputs, it is validated as a row
of its own, saved as best.pt when it scores best (and predicted from), and a resumed run ends with the
same average as one never interrupted. A run killed mid-epoch with an average: test_interrupt.py."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import FAST, write_tiny_competition
from torch.optim.swa_utils import update_bn

from comp.experiment import Experiment, load_config
from comp.models import create_model
from comp.train import loop
from comp.train import swa as swa_mod
from comp.train.build import build_run

SWA = ["epochs=3", "train.swa_epochs=2", "model.drop_rate=0.2", "optim.warmup_epochs=0"]


def is_bn_stat(key: str) -> bool:
    return "running_" in key or "num_batches_tracked" in key


def averaged(ck: dict) -> dict[str, torch.Tensor]:
    """The module weights of a checkpoint's AveragedModel state dict."""
    return {k[len("module."):]: v for k, v in ck["swa"].items() if k.startswith("module.")}


def overrides(root: Path, out: Path) -> list[str]:
    """The `tiny` fixture's overrides (conftest) for a competition at `root`, runs in `out`."""
    return [*FAST, f"data.root={root}", f"out_dir={out}", "data.source=competition", "data.solution_csv=solution.csv",
            "aug.tta=[identity,hflip]"]


def swa_counts_as_best(monkeypatch, best: bool) -> None:
    """The averaged model counts as an improvement (`best`), so best.pt holds it whatever the tiny run scores,
    or never does."""
    phase = {"swa": False}
    real_bn, real_improved = swa_mod.recompute_bn, loop._improved

    def bn(run):
        phase["swa"] = True
        return real_bn(run)

    monkeypatch.setattr(swa_mod, "recompute_bn", bn)
    if best:
        monkeypatch.setattr(loop, "_improved", lambda s, b, h=True, *a: phase["swa"] or real_improved(s, b, h, *a))
    else:
        monkeypatch.setattr(loop, "_improved", lambda s, b, h=True, *a: not phase["swa"] and real_improved(s, b, h, *a))


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory) -> dict:
    """One fold trained with the last 2 of 3 epochs averaged, the average counting as best: each epoch's
    weights as last.pt held them, and what the run logged. Read-only for the tests."""
    base = tmp_path_factory.mktemp("swa")
    root = write_tiny_competition(base / "data")
    over = [*overrides(root, base / "runs"), *SWA]
    cfg = load_config(None, over)
    fold = base / "runs" / "fold0"
    per_epoch, err = [], io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stderr(err):
        swa_counts_as_best(mp, True)
        loop.fit(cfg, 0, on_epoch=lambda e, s: per_epoch.append(torch.load(fold / "last.pt",
                                                                           weights_only=True)["model"]))
    return {"root": root, "overrides": over, "cfg": cfg, "fold": fold, "per_epoch": per_epoch, "err": err.getvalue()}


def test_average_that_loses_to_the_best_epoch_says_so(tiny, monkeypatch, capsys):
    swa_counts_as_best(monkeypatch, False)
    loop.fit(load_config(None, [*tiny["overrides"], *SWA]), 0)
    err = capsys.readouterr().err
    assert "average of the last 2 epochs" in err and "not better than the best epoch's" in err
    assert "best.pt keeps that epoch" in err
    assert torch.load(Path(tiny["out"]) / "fold0" / "best.pt", weights_only=True)["eval_weights"] != "swa"


def test_average_bn_and_prediction(averaged_run):
    cfg, fold, per_epoch = averaged_run["cfg"], averaged_run["fold"], averaged_run["per_epoch"]
    assert "* (best.pt: the average)" in averaged_run["err"]
    last = torch.load(fold / "last.pt", weights_only=True)
    assert int(last["swa"]["n_averaged"]) == 2 and last["swa_done"]
    avg = averaged(last)
    for k in per_epoch[-1]:
        if not is_bn_stat(k):  # the weights: the mean of epochs 1 and 2's
            torch.testing.assert_close(avg[k], (per_epoch[1][k] + per_epoch[2][k]) / 2, rtol=0, atol=1e-6)
    # BatchNorm statistics: not the plain average of the epochs', but a pass over the kit's inputs
    stats = [k for k in avg if "running_mean" in k]
    assert stats and any(not torch.allclose(avg[k], (per_epoch[1][k] + per_epoch[2][k]) / 2) for k in stats)
    run = build_run(cfg, 0, resume=True)  # the kit's loader and normalisation, as training built them
    manual = create_model(cfg.model.name, 3, drop_rate=cfg.model.drop_rate)
    manual.load_state_dict({k: (per_epoch[1][k] + per_epoch[2][k]) / 2 if not is_bn_stat(k) else v
                            for k, v in per_epoch[-1].items()})
    update_bn(list(swa_mod.bn_inputs(run)), manual)
    for k, v in manual.state_dict().items():
        if is_bn_stat(k):
            torch.testing.assert_close(avg[k].float(), v.float(), rtol=0, atol=1e-5, msg=k)
    # validated as a row of its own; best.pt holds it and prediction loads it
    metrics = pd.read_csv(fold / "metrics.csv")
    assert len(metrics) == 4 and list(metrics["weights"].fillna("")) == ["", "", "", "swa"]
    assert metrics["epoch"].iloc[-1] == 3 and metrics["swa_epochs"].iloc[-1] == 2
    best = torch.load(fold / "best.pt", weights_only=True)
    assert best["eval_weights"] == "swa" and "swa" not in best
    assert best["best"] == metrics[cfg.metric].iloc[-1]
    model = Experiment(cfg).load_model(fold / "best.pt").model
    for k, v in model.state_dict().items():
        assert torch.equal(v, avg[k]), k
    assert len(pd.read_csv(fold / "oof.csv")) == len(run.data.valid_ids)


def test_resumed_average_is_bit_identical(averaged_run, tmp_path):
    # the run never interrupted: averaged_run's (which average counts as best changes only best.pt)
    base = averaged_run["fold"].parent
    cfg = load_config(None, [*averaged_run["overrides"], f"out_dir={tmp_path / 'cut'}"])
    fold = tmp_path / "cut" / "fold0"
    keep = tmp_path / "epoch2_last.pt"

    def stop_after_epoch1(epoch, _score):
        if epoch == 1:  # one epoch averaged: the running average must travel in last.pt
            raise loop.Pruned()

    with pytest.raises(loop.Pruned):
        loop.fit(cfg, 0, on_epoch=stop_after_epoch1)
    assert int(torch.load(fold / "last.pt", weights_only=True)["swa"]["n_averaged"]) == 1
    loop.fit(cfg, 0, resume=True, on_epoch=lambda e, s: shutil.copyfile(fold / "last.pt", keep))
    # killed after the last epoch, before the average's last.pt: the resume redoes the average's epoch
    shutil.copyfile(keep, fold / "last.pt")
    loop.fit(cfg, 0, resume=True)
    a, b = (torch.load(d / "fold0" / "last.pt", weights_only=True) for d in (base, tmp_path / "cut"))
    for part in ("model", "swa"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    ma, mb = (pd.read_csv(d / "fold0" / "metrics.csv").drop(columns=["seconds", "images_per_s", "data_wait_share"],
                                                            errors="ignore") for d in (base, fold.parent))
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
