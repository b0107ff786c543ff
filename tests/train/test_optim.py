"""The optimizer and its learning-rate schedule (comp.train.optim): warmup then cosine, one-cycle, constant;
the fused kernels on CUDA and timm's multi-tensor EMA."""

from __future__ import annotations

import pytest
import torch

from comp.experiment import load_config
from comp.train.build import build_run
from comp.train.loop import train_one_epoch
from comp.train.optim import build_optimizer, lr_at

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4"]  # 15 training images: 3 steps per epoch


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


def test_lr_schedules(tiny):
    cfg = config(tiny, "epochs=10", "optim.lr=0.1", "optim.min_lr=0.001", "optim.warmup_epochs=2")

    def f(s):
        return lr_at(cfg, s, steps_per_epoch=10)  # warmup 20 steps, 100 in all

    assert f(0) == pytest.approx(0.01) and f(10) == pytest.approx(0.505) and f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5) and f(100) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(20, 100))
    cfg_one = config(tiny, "epochs=10", "optim.schedule=onecycle")

    def one(s):
        return lr_at(cfg_one, s, 10)

    assert one(0) == pytest.approx(0.04) and one(30) == pytest.approx(1.0) and one(100) < 0.01
    cfg_const = config(tiny, "epochs=10", "optim.schedule=constant", "optim.warmup_epochs=0")
    assert lr_at(cfg_const, 0, 10) == lr_at(cfg_const, 99, 10) == 1.0


def test_fused_optimizer_on_cuda_and_foreach_ema(tiny, monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model.get_classifier = lambda: model[0]
    for name in ("adamw", "sgd"):
        cfg = config(tiny, f"optim.name={name}")
        assert build_optimizer(cfg, model, torch.device("cuda")).defaults["fused"] is True  # one kernel per step
        assert not build_optimizer(cfg, model, torch.device("cpu")).defaults.get("fused")
    # the EMA takes timm's multi-tensor path: one torch._foreach_lerp_ per optimizer step
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = build_run(config(tiny, "train.ema=true"), 0, resume=False)
    assert run.ema.foreach
    train_one_epoch(run, 0)
    assert len(calls) == run.steps_per_epoch
