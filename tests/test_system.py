"""comp.system: no Linux-only call without a fallback. The CPU count without os.sched_getaffinity (macOS,
Windows), and the image cache build where neither affinity nor the forkserver start method exist."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from helpers import FAST, ROOT
from replicas import build, overrides

from comp import system
from comp.data import cache
from comp.data.competition import load_competition
from comp.experiment import load_config


def test_usable_cpus_without_sched_getaffinity(monkeypatch):
    assert system.usable_cpus() >= 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.delattr(os, "process_cpu_count", raising=False)  # Python < 3.13
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert system.usable_cpus() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable", as the docs allow
    assert system.usable_cpus() == 1


@pytest.mark.slow
def test_cache_build_runs_where_neither_affinity_nor_forkserver_exist(monkeypatch, tmp_path):
    """The image cache build as on Windows: no os.sched_getaffinity, only the spawn start method; its
    default worker count and pool still work, and give the entries a serial build gives."""
    root = build("aptos2019", tmp_path / "aptos")
    cfgs = {k: load_config(ROOT / "configs" / "aptos2019.yaml",
                           [*overrides(root, tmp_path / "runs", FAST), f"images.cache_dir={tmp_path / k}"])
            for k in ("serial", "pool")}
    comp = load_competition(cfgs["serial"])
    paths = comp.train["path"].tolist()[:6]
    assert cache.process_images(cfgs["serial"], comp.root, paths, workers=1) == []
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(cache, "MIN_PARALLEL", 1)  # a pool even for 6 images
    started = []
    real = system.process_context
    monkeypatch.setattr(cache, "process_context", lambda: started.append(real()) or started[-1])
    assert cache.process_images(cfgs["pool"], comp.root, paths) == []
    assert [c.get_start_method() for c in started] == ["spawn"]

    def entries(k: str) -> dict[str, bytes]:
        folder = cache.cache_folder(cfgs[k])
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.suffix in (".png", ".npy")}

    assert len(entries("pool")) == 6 and entries("pool") == entries("serial")
