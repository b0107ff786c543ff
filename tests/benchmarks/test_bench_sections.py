"""The benchmark sections of issue 17 run (`--quick`, on the CPU): `recipes` (each config's recipe, the kit's
loop against timm's loop and compute only), `predict` (predict_test at Kaggle scale, shrunk), the compile
modes of the `gpu` section's references, and benchmarks/gpu_all.sh, the one prepared GPU run."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch
from helpers import ROOT

from benchmarks import common, harness
from comp.experiment import load_config

RECIPES = ["rsna_bone_age", "ranzcr_clip"]  # grey + regression + EMA (inception_v3); multi-label, tf_efficientnet_b8


def test_recipes_section_uses_each_configs_recipe(tmp_path):
    lines: list[str] = []
    out = harness.run(["recipes"], quick=True, work=tmp_path, echo=lines.append, options={"recipes": RECIPES})
    rows = out["sections"]["recipes"]["rows"]
    assert list(rows) == RECIPES
    for name, r in rows.items():
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert r["model"] == cfg.model.name and r["ema"] == cfg.train.ema  # the config's model and EMA
        assert r["aug_train"] == [dict(a) for a in cfg.aug.train]  # and its augmentation pipeline
        for side in ("kit", "timm", "compute_only"):
            assert math.isfinite(r[side]["images_per_s"]) and r[side]["images_per_s"] > 0, (name, side)
            assert r[side]["peak_gib"] is None  # no GPU: no device memory to report
        assert r["kit_share_of_compute_only"] > 0 and r["kit_ratio_vs_timm"] > 0
    assert rows["rsna_bone_age"]["size"] == 80 and rows["ranzcr_clip"]["size"] == 32  # inception's minimum input
    assert out["recipes_worst_share_of_compute_only"] > 0
    assert any(line.startswith("5. Recipes") for line in lines)
    assert sum(line.lstrip().startswith(tuple(RECIPES)) for line in lines) == len(RECIPES)


def test_predict_section_runs_the_kits_predict_test(tmp_path, monkeypatch):
    import comp.predict.predict as predict

    calls = []
    real = predict.predict_test
    monkeypatch.setattr(predict, "predict_test", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    lines: list[str] = []
    out = harness.run(["predict"], quick=True, work=tmp_path, echo=lines.append, options={"predict_images": 12})
    rows = out["sections"]["predict"]["rows"]
    assert [r["model"] for r in rows] == ["resnet50", "timm/efficientnet_b3"]
    assert len(calls) == 2 and all(len(c.test) == 12 for c in calls)  # the kit's path, every test image
    for r in rows:
        assert r["images"] == 12 and r["compile"] is False and r["peak_gib"] is None
        assert r["forward_images_per_s"] == pytest.approx(12 * 5 * 4 / r["seconds"])
    assert out["predict_scale_images_per_s"] > 0
    assert any(line.startswith("6. Predict") and "5 folds x 4 TTA views" in line for line in lines)


def test_compute_only_and_timm_loop_take_the_compile_mode(tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: modes.append(mode) or m)
    r = common.compute_only(2, 1, "reduce-overhead", device="cpu", model="timm/test_resnet", size=32, ema=True,
                              accum=2)
    assert modes == ["reduce-overhead"] and r["images_per_s"] > 0
    assert harness._mode_key(False) == "eager" and harness._mode_key(True) == "compile"
    assert harness._mode_key("default") == "compile"
    assert harness._mode_key("max-autotune") == "compile_max-autotune"


def test_gpu_all_script_is_ready():
    script = ROOT / "benchmarks" / "gpu_all.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for part in ("--sections", "gpu", "recipes", "predict", "tests/train/test_gpu.py", "$OUT"):
        assert part in text, part


def test_gpu_section_measures_each_compile_mode(tmp_path, monkeypatch):
    # The GPU section's bookkeeping, on the CPU: fit, compute only and timm's loop stand in with fixed
    # numbers (their GPU runs are benchmarks/gpu_all.sh's), the modes and their rows must all be there.
    import pandas as pd

    import comp.pipeline
    import comp.train.loop
    from comp.experiment import RunFiles

    seen = []

    def fake_fit(cfg, fold):
        seen.append(cfg.train.compile)
        d = tmp_path / "runs" / str(len(seen))
        d.mkdir(parents=True)
        ips = {False: 100.0, "default": 150.0, "reduce-overhead": 160.0}[cfg.train.compile]
        pd.DataFrame({"images_per_s": [1.0, ips, ips], "data_wait_share": [0.5, 0.01, 0.01]}).to_csv(
            d / "metrics.csv", index=False)
        return {"dir": d, "files": RunFiles(d)}

    monkeypatch.setattr(harness, "fundus_set", lambda *a, **k: tmp_path)
    monkeypatch.setattr(comp.pipeline, "prepare", lambda cfg: None)
    monkeypatch.setattr(comp.train.loop, "fit", fake_fit)
    monkeypatch.setattr(harness, "compute_only", lambda b, s, mode, device: {"images_per_s": 200.0})
    monkeypatch.setattr(harness, "timm_loop", lambda *a, device: {"images_per_s": 50.0, "data_wait_share": 0.3})
    lines: list[str] = []
    res = harness.bench_gpu(tmp_path, False, lines.append, device="cpu", compile_modes=("default", "reduce-overhead"),
                            images=128)
    assert seen == [False, "default", "reduce-overhead"] and res["images"] == 128
    assert res["gpu_compile_modes_images_per_s"] == {"False": 100.0, "default": 150.0, "reduce-overhead": 160.0}
    assert res["gpu_compile_images_per_s"] == 150.0 and res["gpu_ratio_vs_timm"] == 2.0
    assert res["kit_compile_reduce-overhead"]["share_of_compute_only"] == 0.8
    assert set(res) >= {"timm_eager", "timm_compile", "ceiling_compile_reduce-overhead"}
    assert any("train.compile=reduce-overhead" in line for line in lines)
