"""The CUDA paths of training and prediction: AMP (bf16, and fp16 with its GradScaler), channels_last,
torch.compile, resume, and predictions that agree with the CPU's. Skipped without a GPU (CI has none);
run on a lent GPU with `pytest tests/train/test_gpu.py` (BENCHMARKS.md records the last such run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from comp.data.competition import load_competition
from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config
from comp.models import create_model
from comp.predict.predict import predict_test
from comp.train.build import build_run
from comp.train.loop import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = ["device=cuda", "train.amp=true", "train.channels_last=true", "batch_size=4"]


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + GPU + ["predict.folds=[0]"] + list(extra))


def test_fit_bf16_channels_last_ema_then_resume(tiny):
    cfg = config(tiny, "train.ema=true", "epochs=1")
    run = build_run(cfg, 0, resume=False)
    assert run.device.type == "cuda" and run.amp_dtype == torch.bfloat16  # every GPU the kit targets has bf16
    assert next(run.raw.parameters()).is_cuda and not run.scaler.is_enabled()
    del run
    fit(cfg, 0)
    fold = tiny["out"] / "fold0"
    ck = torch.load(fold / "last.pt", map_location="cpu", weights_only=True)  # loads with no GPU too
    assert all(t.device.type == "cpu" for t in ck["model"].values())
    assert ck["ema"] is not None and "cuda" in ck["rng"][0]
    fit(config(tiny, "train.ema=true", "epochs=2"), 0, resume=True)
    m = pd.read_csv(fold / "metrics.csv")
    assert list(m["epoch"]) == [0, 1] and np.isfinite(m["train_loss"]).all()


def test_fp16_gradscaler_path(tiny, monkeypatch):
    # A T4/P100 (Kaggle, Colab) has no bf16: the kit must fall back to fp16 with loss scaling.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    cfg = config(tiny, "epochs=1")
    run = build_run(cfg, 0, resume=False)
    assert run.amp_dtype == torch.float16 and run.scaler.is_enabled()
    del run
    fit(cfg, 0)
    ck = ckpt_io.load(tiny["out"] / "fold0" / "last.pt")
    assert ck["scaler"]["scale"] > 0  # the scaler state is checkpointed, so a resume keeps its scale


def test_compile_trains(tiny):
    torch.compiler.reset()
    res = fit(config(tiny, "train.compile=true", "epochs=1"), 0)
    assert np.isfinite(pd.read_csv(res["dir"] / "metrics.csv")["train_loss"]).all()
    keys = torch.load(res["dir"] / "best.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod.") for k in keys)  # the plain model's names, loadable anywhere


def test_gpu_prediction_matches_cpu(tiny):
    cfg = config(tiny, "epochs=1", "model.name=resnet18", "train.amp=false")
    fit(cfg, 0)
    comp = load_competition(cfg)
    gpu = predict_test(cfg, comp, device=torch.device("cuda"))
    cpu = predict_test(cfg, comp, device=torch.device("cpu"))
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)  # TF32 convolutions on the GPU
    amp = predict_test(load_config(None, tiny["overrides"] + GPU + ["model.name=resnet18", "predict.folds=[0]"]), comp)
    np.testing.assert_allclose(amp, cpu, atol=3e-2)  # bf16


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_kit_resnet_equals_timm_on_gpu(name):
    torch.backends.cudnn.allow_tf32 = False  # exact float32 convolutions for the comparison
    try:
        kit = create_model(name, 7).cuda().to(memory_format=torch.channels_last).eval()
        ref = timm.create_model(name, num_classes=7).cuda().to(memory_format=torch.channels_last).eval()
        kit.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(4, 3, 96, 96, device="cuda").contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert (kit(x) - ref(x)).abs().max().item() <= 1e-4
            with torch.autocast("cuda", dtype=torch.bfloat16):
                assert (kit(x).float() - ref(x).float()).abs().max().item() <= 1e-2
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_no_host_sync_inside_the_training_step(tiny, monkeypatch):
    # Between loss read-backs (train.log_every) a step must not make the host wait for the GPU: the fused
    # optimizer, the foreach EMA, the side-stream batch copy and the deferred loss read keep it asynchronous.
    # Sync debug mode "error" makes any synchronising call raise; the only ones allowed are the log points'
    # copies of the stacked losses (`flush`, step 0 and the last step), let through here and counted.
    import traceback

    from comp.train.loop import train_one_epoch

    run = build_run(config(tiny, "train.ema=true", "train.log_every=1000", "train.recovery_every=0",
                           "batch_size=2", "num_workers=0"), 0, resume=False)
    assert run.optimizer.defaults["fused"] is True and run.ema.foreach
    train_one_epoch(run, 0)  # warm-up: cudnn autotuning and lazy init may sync
    run.state.update(epoch=1, step=0)
    reads, real_cpu = [], torch.Tensor.cpu

    def allowed_cpu(self, *a, **k):
        stack = [f.name for f in traceback.extract_stack()]
        assert "flush" in stack, stack[-6:]  # a device-to-host copy anywhere else is a sync inside the step
        reads.append(self.device.type)
        torch.cuda.set_sync_debug_mode("default")
        try:
            return real_cpu(self, *a, **k)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(torch.Tensor, "cpu", allowed_cpu)
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = train_one_epoch(run, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert run.steps_per_epoch >= 4 and np.isfinite(stats["train_loss"])
    assert reads == ["cuda", "cuda"], reads  # step 0 and the last step


@pytest.mark.parametrize("mode", ["reduce-overhead"])  # the others compile as `default` does, only longer
def test_compile_modes_train_and_predict(tiny, mode):
    # train.compile / predict.compile in a torch.compile mode: reduce-overhead runs the model in CUDA graphs,
    # whose outputs the next call overwrites (forward_views copies each view's output before the next).
    torch.compiler.reset()
    cfg = config(tiny, f"train.compile={mode}", "epochs=1", "train.amp=false", "model.name=resnet18")
    res = fit(cfg, 0)
    assert np.isfinite(pd.read_csv(res["dir"] / "metrics.csv")["train_loss"]).all()
    comp = load_competition(cfg)
    eager = predict_test(cfg, comp)
    torch.compiler.reset()
    compiled = predict_test(config(tiny, f"predict.compile={mode}", "train.amp=false", "model.name=resnet18"), comp)
    np.testing.assert_allclose(compiled, eager, atol=1e-3)  # TF32 convolutions, other kernels
