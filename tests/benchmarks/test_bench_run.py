"""benchmarks/run.py --quick --json runs every section and reports every headline number (no speed
assertions: the machine running the tests is not the one the benchmark is for)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from helpers import ROOT, run_script

from benchmarks.common import fundus_image, interleaved, median_ratio

POSITIVE = ["loader_speedup_vs_seed", "cache_speedup_vs_seed", "cache_png_speedup_vs_seed",
            "resnet_step_ratio_vs_timm", "multilabel_ratio_change", "e2e_epoch_seconds", "e2e_images_per_s",
            "predict_images_per_s"]


def test_quick_benchmark_json(tmp_path):
    # One thread: the test suite may share the cores with other jobs, and oversubscribed OpenMP threads
    # make a smoke run crawl; --quick measures nothing worth the contention anyway.
    # Sections 1-4; the recipes and predict sections (issue 17) have their tests in test_bench_sections.py.
    res = run_script(str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", "--work", str(tmp_path), "--sections",
                     "loader", "model", "e2e", "gpu", check=True, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    lines = res.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    for key in POSITIVE:
        assert isinstance(out.get(key), float) and math.isfinite(out[key]) and out[key] > 0, (key, out.get(key))
    assert 0 <= out["e2e_data_wait_share"] < 1
    assert out["machine"]["cores"] >= 1 and out["machine"]["torch"] == torch.__version__
    for title in ("1. Input pipeline", "2. Model step", "3. End to end", "4. GPU"):
        assert any(line.startswith(title) for line in lines), title
    if torch.cuda.is_available():
        assert out["gpu_images_per_s"] > 0 and 0 <= out["gpu_data_wait_share"] < 1
    else:
        assert out["sections"]["gpu"]["skipped"]


def test_fundus_image_and_ratios():
    img = fundus_image(96, 128, np.random.default_rng(0))
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    assert img[0, 0].max() < 10 and img[48, 64, 2] > 100  # dark corner, red disc (BGR)
    secs = interleaved({"a": lambda: None, "b": lambda: sum(range(10_000))}, rounds=3)
    assert [len(v) for v in secs.values()] == [3, 3]
    assert median_ratio([1.0, 2.0, 1.0], [2.0, 2.0, 3.0]) == 2.0
