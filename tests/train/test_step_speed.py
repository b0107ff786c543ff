"""The training step and prediction paths that speed depends on (issue 17), proven on the CPU: the fused
optimizer chosen for CUDA, the EMA's foreach update, no host read of a tensor between log points, the
`train.compile` / `predict.compile` modes, and compiled prediction equal to eager prediction. The CUDA
side of the same claims (sync debug mode "error") is in tests/train/test_gpu.py."""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch

from comp.data.competition import load_competition
from comp.device import compile_model
from comp.errors import UserError
from comp.experiment import load_config
from comp.predict.predict import predict_test
from comp.schema import COMPILE_MODES
from comp.train.build import build_run
from comp.train.loop import fit, train_one_epoch
from comp.train.optim import build_optimizer

# ------------------------------------------------------------------------------------ compile modes


@pytest.mark.parametrize("key", ["train.compile", "predict.compile"])
def test_compile_accepts_bools_and_modes(key):
    assert load_config(None, []).train.compile is False and load_config(None, []).predict.compile is False
    for value, want in [("true", True), ("false", False), *((m, m) for m in COMPILE_MODES)]:
        cfg = load_config(None, [f"{key}={value}"])
        got = cfg.train.compile if key == "train.compile" else cfg.predict.compile
        assert got == want and type(got) is type(want), (value, got)


@pytest.mark.parametrize("value", ["fast", "max_autotune", "1", "[default]"])
def test_compile_refuses_other_values(value):
    with pytest.raises(UserError) as e:
        load_config(None, [f"train.compile={value}"])
    msg = str(e.value)
    assert msg.startswith("bad value for config key 'train.compile'") and "\n" not in msg
    assert "reduce-overhead" in msg and "max-autotune-no-cudagraphs" in msg


def test_compile_model_passes_the_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: calls.append(mode) or ("compiled", m))
    net = torch.nn.Linear(2, 2)
    assert compile_model(net, False) is net and calls == []
    for value, mode in [(True, None), ("default", None), *((m, m) for m in COMPILE_MODES[1:])]:
        assert compile_model(net, value) == ("compiled", net) and calls[-1] == mode
    with pytest.raises(ValueError):  # the config refuses it first; here it would be the kit's own bug
        compile_model(net, "fast")


def test_build_run_compiles_in_the_configured_mode(tiny, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: modes.append(mode) or m)
    run = build_run(load_config(None, tiny["overrides"] + ["train.compile=max-autotune-no-cudagraphs"]), 0, False)
    assert modes == ["max-autotune-no-cudagraphs"] and run.model is run.raw


# --------------------------------------------------------------------------- optimizer and EMA paths


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_is_chosen_for_cuda(tiny, name):
    # torch builds a fused optimizer over CPU parameters too, so the choice made for a CUDA device is
    # checked here without one; elsewhere torch's default (foreach) stays.
    cfg = load_config(None, tiny["overrides"] + [f"optim.name={name}"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    model.get_classifier = lambda: model[2]
    cuda = build_optimizer(cfg, model, torch.device("cuda"))
    cpu = build_optimizer(cfg, model, torch.device("cpu"))
    assert cuda.defaults["fused"] is True and not cpu.defaults.get("fused")
    assert type(cuda) is (torch.optim.AdamW if name == "adamw" else torch.optim.SGD)


def test_ema_update_takes_the_foreach_path(tiny, monkeypatch):
    run = build_run(load_config(None, tiny["overrides"] + ["train.ema=true"]), 0, False)
    assert run.ema.foreach  # ModelEmaV3 turns it off when the EMA and the model are on different devices
    lerps = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda a, b, weight: lerps.append(len(a)) or real(a, b, weight=weight))
    monkeypatch.setattr(run.ema, "_lerp_", lambda *a, **k: pytest.fail("per-tensor EMA update"))
    before = [v.clone() for v in run.ema.module.state_dict().values()]
    with torch.no_grad():
        for p in run.raw.parameters():
            p.add_(1.0)
    run.ema.update(run.raw, step=100)
    floats = sum(v.is_floating_point() for v in run.raw.state_dict().values())
    assert lerps == [floats]  # one multi-tensor launch for every float tensor
    assert any(not torch.equal(a, b) for a, b in zip(before, run.ema.module.state_dict().values(), strict=True))


# ------------------------------------------------------------------------- no host reads in a step

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _count_host_reads(monkeypatch) -> list[tuple[str, list[str]]]:
    """Patch every Tensor method that copies a value to the host (on a GPU, a sync); each call made while
    the patch holds is recorded with the names of the functions on its stack. Calls from the DataLoader
    (torch.utils.data: the dataset, in worker processes on a GPU run) and from the sampler's order
    (comp.data.loader.epoch_order: a CPU generator's permutation) read host tensors, not device ones, and
    are left out."""
    seen: list[tuple[str, list[str]]] = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _name=name, _real=real, **k):
            stack = traceback.extract_stack()[:-1]
            if not any("torch/utils/data/" in f.filename or f.name == "epoch_order" for f in stack):
                seen.append((_name, [f.name for f in stack]))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return seen


def _step_run(tiny, *extra: str):
    # 4 steps of 2 images (30 training images in 2 folds: 15 a fold), EMA on, the loss read back at step 0
    # and at the epoch's end only (log_every=1000); the optimizer as CUDA gets it (fused), so the step
    # taken is the GPU's (torch's CPU foreach AdamW reads its step counters with .item()).
    cfg = load_config(None, tiny["overrides"] + ["batch_size=2", "train.ema=true", "train.log_every=1000",
                                                 "train.recovery_every=0", *extra])
    run = build_run(cfg, 0, False)
    run.optimizer = build_optimizer(cfg, run.raw, torch.device("cuda"))
    run.set_lr()
    return run


def test_no_host_read_between_log_points(tiny, monkeypatch):
    run = _step_run(tiny)
    train_one_epoch(run, 0)  # warm-up: lazy initialisation
    run.state.update(epoch=1, step=0)
    seen = _count_host_reads(monkeypatch)
    stats = train_one_epoch(run, 1)
    monkeypatch.undo()
    assert run.steps_per_epoch >= 4 and np.isfinite(stats["train_loss"])
    outside = [(n, s[-4:]) for n, s in seen if "flush" not in s]
    assert outside == [], outside  # every host read is one of the two log points' reads
    flushes = [n for n, s in seen if "flush" in s and n == "cpu"]
    assert len(flushes) == 2, seen  # step 0 and the last step: one copy of the stacked losses each


def test_host_read_detector_catches_a_read_in_the_step(tiny, monkeypatch):
    # The check above must be able to fail: a loss read inside the step (what a per-step loss meter does).
    run = _step_run(tiny)
    real_loss = run.task.loss
    run.task.loss = lambda *a, **k: (lambda out: out.item() and out)(real_loss(*a, **k))
    seen = _count_host_reads(monkeypatch)
    train_one_epoch(run, 0)
    monkeypatch.undo()
    assert sum(n == "item" and "flush" not in s for n, s in seen) == run.steps_per_epoch


# -------------------------------------------------------------------------------- compiled prediction


def test_compiled_prediction_equals_eager(tiny):
    # Inductor (torch.compile's default backend) builds C++ kernels on the CPU: ~45 s the first time on a
    # 2-core machine, ~6 s with its cache (/tmp/torchinductor_<user>) warm.
    cfg = load_config(None, tiny["overrides"] + ["predict.folds=[0]", "batch_size=9", "aug.tta=[identity,hflip]"])
    fit(cfg, 0)
    comp = load_competition(cfg)
    eager = predict_test(cfg, comp)
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()
    compiled = predict_test(load_config(None, tiny["overrides"] + ["predict.folds=[0]", "batch_size=9",
                                                                   "aug.tta=[identity,hflip]", "predict.compile=true"]),
                            comp)
    assert eager.shape == (9, 3) and compiled.shape == eager.shape
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did go through torch.compile
