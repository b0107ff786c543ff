"""The `mil` benchmark section (issue 27 item 8) runs in its smallest mode (`--quick`, on the CPU) through the
harness and reports every number it promises; no speed assertions (the machine running the tests is not
the one the benchmark is for)."""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks import harness, run
from benchmarks.mil import QUICK, ct_set, decode_picked, device_step, mil_config

HEADLINES = ["mil_cache_speedup_vs_decode", "mil_cache_speedup_vs_decode_picked", "mil_loader_rows_per_s",
             "mil_step_over_loader", "mil_batch_float_mib"]


def positive(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_mil_section_reports_cache_loader_step_and_memory(tmp_path):
    assert "mil" in harness.SECTIONS and "mil" in run.SECTIONS
    lines: list[str] = []
    out = harness.run(["mil"], quick=True, work=tmp_path, echo=lines.append)
    res = out["sections"]["mil"]
    assert {k for k, v in res.items() if isinstance(v, float)} == {*HEADLINES, "wall_seconds"}  # the headlines only
    for key in HEADLINES:
        assert positive(out.get(key)), (key, out.get(key))
    assert res["model"] == QUICK["model"] and res["instances"] == QUICK["instances"]
    for k in ("cache_seconds", "decode_seconds", "decode_picked_seconds"):
        assert positive(res["row"][k]), k
    assert set(res["loader"]) == {"workers_0_rows_per_s", "workers_2_rows_per_s"}
    assert all(positive(v) for v in res["loader"].values())
    cpu = res["step"]["cpu"]
    assert positive(cpu["seconds_per_row"]) and positive(cpu["over_loader_0"]) and positive(cpu["over_loader_2"])
    if torch.cuda.is_available():
        assert positive(res["step"]["cuda"]["seconds_per_row"]) and res["step"]["cuda"]["peak_gib"] > 0
    else:
        assert res["step"]["cuda"]["skipped"]
    mem = res["memory"]
    b, n, size = res["batch"], QUICK["instances"], QUICK["size"]
    assert mem["batch_shape"] == [b, n, 3, size, size]
    assert mem["uint8_bytes"] == b * n * 3 * size * size and mem["float_bytes"] == 4 * mem["uint8_bytes"]
    assert mem["cpu_float_input_bytes"] == mem["float_bytes"]  # to_input: float32 on the device
    assert mem["traced_peak_bytes_cache"] > 0 and mem["traced_peak_bytes_decode"] > 0
    assert mem["shm_in_flight_bytes_8x8_actual"] == n * mem["shm_in_flight_bytes_8x8_assumed"]
    assert any(line.startswith("7. MIL rows") for line in lines)
    assert any("skipped" in line for line in lines) != torch.cuda.is_available()


def test_decode_picked_reads_what_the_cache_gives(tmp_path):
    # The benchmark's best-case uncached read must produce the very instances of the kit's MilLoader.
    from comp.data.competition import load_competition
    from comp.data.mil_cache import MilLoader

    root = ct_set(tmp_path, 7, 32, 1, 2)
    cfg = mil_config(root, tmp_path / "out", 2, 5, 16, "images.cache=false")
    path = load_competition(cfg).train["path"].iloc[0]
    loader = MilLoader(cfg, None, None, {})
    for seed in (1, 2):
        got = decode_picked(loader, path, seed)
        assert got.shape == (5, 16, 16, 3) and got.dtype == np.uint8
        assert np.array_equal(got, loader(path, seed))


def test_device_step_reports_per_row_time_against_the_loader():
    # The CUDA side of part (b), run on the CPU: bf16 autocast, rows a batch, the ratio to each loader.
    r = device_step("timm/test_resnet", 2, 32, 1, {"workers_0_rows_per_s": 10.0, "workers_2_rows_per_s": 20.0},
                    device="cpu", rows=2)
    assert r["rows"] == 2 and positive(r["seconds_per_row"]) and r["peak_gib"] is None
    assert r["over_loader_0"] == r["seconds_per_row"] * 10 and r["over_loader_2"] == r["seconds_per_row"] * 20
    assert r["float_input_bytes"] == 2 * 2 * 3 * 32 * 32 * 4
