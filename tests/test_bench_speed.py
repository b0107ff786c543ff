"""The benchmark sections of issue 17 run (`--quick`, on the CPU): `recipes` (each config's recipe, the kit's
loop against timm's loop and compute only), `predict` (predict_test at Kaggle scale, shrunk), the compile
modes of the `gpu` section's references, and benchmarks/gpu_all.sh, the one prepared GPU run."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch
from conftest import ROOT

from benchmarks import harness
from comp.config import load_config

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
    r = harness._compute_only(2, 1, "reduce-overhead", device="cpu", model="timm/test_resnet", size=32, ema=True,
                              accum=2)
    assert modes == ["reduce-overhead"] and r["images_per_s"] > 0
    assert harness._mode_key(False) == "eager" and harness._mode_key(True) == "compile"
    assert harness._mode_key("default") == "compile"
    assert harness._mode_key("max-autotune") == "compile_max-autotune"


def test_gpu_all_script_is_ready():
    script = ROOT / "benchmarks" / "gpu_all.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for part in ("--sections", "gpu", "recipes", "predict", "tests/test_gpu.py", "$OUT"):
        assert part in text, part
