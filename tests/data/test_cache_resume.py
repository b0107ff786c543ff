"""comp.data.cache interrupted: a build killed (SIGKILL at a chosen entry; SIGTERM, SIGINT, SIGKILL to the
process group at random moments) or stopped by a full disk resumes, every entry in place whole or absent,
no temporary left, folds.csv written only at the end, and the rerun ends with the very bytes of a build
never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import disk_full, signal_group, start
from helpers import COMMON, FAST, ROOT, experiment, one_error, run_main, snapshot, write_tiny_competition
from replicas import build, overrides

from comp.data.cache import cache_folder, entry_path, read_entry
from comp.data.competition import load_competition
from comp.data.preprocess import load_preprocessed
from comp.experiment import load_config
from comp.pipeline import prepare


def _entries(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".png", ".npy")}


# A subprocess: the build is killed (SIGKILL) by the process itself at its 6th entry.
KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import comp.data.cache as c
from comp.experiment import load_config
from comp.pipeline import prepare
real, n = c.write_entry, [0]
def dying(img, path, fmt):  # the 6th entry: its temporary file half written, then SIGKILL
    n[0] += 1
    if n[0] == 6:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name('.' + path.name + '.' + str(os.getpid()) + '.tmp').write_bytes(b'half a png')
        os.kill(os.getpid(), signal.SIGKILL)
    real(img, path, fmt)
c.write_entry = dying
prepare(load_config({config!r}, {overrides!r}))
"""


@pytest.mark.slow
def test_killed_build_resumes(tmp_path):
    root = build("aptos2019", tmp_path / "aptos2019")
    ov = overrides(root, tmp_path / "runs", FAST)
    config = str(ROOT / "configs" / "aptos2019.yaml")
    code = KILLER.format(root=str(ROOT), config=config, overrides=ov)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    cfg = load_config(config, ov)
    folder = cache_folder(cfg)
    assert len(_entries(folder)) == 5 and len(list(folder.rglob(".*.tmp"))) == 1  # 5 whole entries, no 6th
    assert not (tmp_path / "runs" / "folds.csv").exists()

    prepare(cfg)  # resumes: builds the rest, drops the leftover
    comp = load_competition(cfg)
    paths = comp.train["path"].tolist() + comp.test["path"].tolist()
    assert len(_entries(folder)) == len(paths) and not list(folder.rglob(".*.tmp"))
    for p in paths:  # every entry, those before the kill included, is what decoding gives
        fmt = cfg.images.cache_format
        assert (read_entry(entry_path(folder, comp.root, p, fmt), fmt) == load_preprocessed(
            p, 16, ["crop_circle", "ben_graham"])).all()
    assert (tmp_path / "runs" / "folds.csv").is_file()


# --- a full disk while the cache is built ---------------------------------------------------------------

def test_disk_full_while_building_the_cache(tmp_path, monkeypatch):
    ex = experiment(tmp_path / "ex", train=False)
    cfg = load_config(None, ex["overrides"])
    disk_full(monkeypatch, f"png.{cfg.images.cache_format}", nth=5)  # the fifth entry: half, then the disk is full
    out = ex["base"] / "new_runs"
    code, _, err = run_main("prepare.py", *ex["overrides"], f"out_dir={out}")
    one_error(code, err, "could not write cache entry", "No space left on device (images.cache_dir)")
    cfg = load_config(None, ex["overrides"])
    folder, entries = cache_folder(cfg), f"*.{cfg.images.cache_format}"
    assert len(list(folder.rglob(entries))) == 4 and not list(folder.rglob(".*.tmp"))  # 4 whole entries
    assert not (out / "folds.csv").exists() and not (folder / "cache.json").exists()
    monkeypatch.undo()
    code, _, err = run_main("prepare.py", *ex["overrides"], f"out_dir={out}")
    assert code == 0, err
    assert len(list(folder.rglob(entries))) == 39 and (out / "folds.csv").is_file()


# --- prepare killed at random moments -------------------------------------------------------------------
# Subprocesses: a signal to a process group (the script and its pool of cache workers), and a SIGKILL.

def test_a_stopped_build_ends_its_workers_before_it_returns(tmp_path, monkeypatch):
    """Ctrl-C (here: KeyboardInterrupt at the first finished image) ends the worker processes, busy in their
    chunks with more queued, before the build returns: nothing of the pool is left for the interpreter's exit
    to wait on (issue: prepare.py outlived SIGINT for 60 s under load)."""
    import multiprocessing

    import comp.data.cache as cache

    root = write_tiny_competition(tmp_path / "data", n_per_class=40, n_test=0, size=96)
    cfg = load_config(None, [*COMMON, f"data.root={root}", "image_size=48", "images.preprocess=[ben_graham,clahe]",
                             f"images.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}"])
    comp = load_competition(cfg)
    paths = comp.train["path"].tolist()

    class StopAtFirst:  # the progress bar, told of each finished image in the main process
        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            pass

    before = {p.pid for p in multiprocessing.active_children()}
    monkeypatch.setattr(cache, "progress", lambda n, desc: StopAtFirst())
    with pytest.raises(KeyboardInterrupt):
        cache.process_images(cfg, comp.root, paths, workers=2)
    left = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert left == [], f"cache workers still running after the stop: {left}"
    written = list(cache_folder(cfg).rglob("*.npy"))
    assert len(written) < len(paths)  # stopped mid-build: the rest was cancelled, not finished
    monkeypatch.undo()
    assert cache.process_images(cfg, comp.root, paths, workers=1) == []  # the rerun completes, temporaries gone
    assert not list(cache_folder(cfg).rglob(".*.tmp"))


# --- prepare: the cache build and the folds ------------------------------------------------------------

@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict:
    """280 images of 160 px with two preprocessing steps: enough work (a pool of processes) to be
    interrupted in the middle; and the outputs of a prepare never interrupted."""
    base = tmp_path_factory.mktemp("prepare_kill")
    root = write_tiny_competition(base / "data", n_per_class=80, n_test=40, size=160)
    ov = [*COMMON, f"data.root={root}", "image_size=48", "images.preprocess=[ben_graham,clahe]"]
    ref = load_config(None, [*ov, f"images.cache_dir={base / 'ref_cache'}", f"out_dir={base / 'ref_runs'}"])
    prepare(ref)
    return {"base": base, "overrides": ov, "cache": snapshot(cache_folder(ref)), "runs": snapshot(base / "ref_runs")}


@pytest.mark.slow
def test_prepare_killed_at_random_moments_then_rerun_gives_the_same_cache_and_folds(big, tmp_path):
    ov = [*big["overrides"], f"images.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}"]
    cfg = load_config(None, ov)
    folder, pattern = cache_folder(cfg), f"*.{cfg.images.cache_format}"
    total = len(big["cache"]) - 1  # entries, without cache.json
    rng = random.Random(8)
    seen = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        have = len(list(folder.rglob(pattern))) if folder.exists() else 0
        target = have + rng.randint(5, max(6, (total - have) // 3))
        p = start("prepare.py", *ov, log=tmp_path / "stderr.log")
        while p.poll() is None and (not folder.exists() or len(list(folder.rglob(pattern))) < target):
            time.sleep(0.001)
        code = signal_group(p, sig)
        assert code in (-sig, 128 + sig, 130 if sig == signal.SIGINT else -sig), (sig, code)
        # whatever was interrupted: every entry in place is whole, folds.csv not written before the end
        now = snapshot(folder)
        entries = {k: v for k, v in now.items() if not Path(k).name.startswith(".")}
        assert all(big["cache"][k] == v for k, v in entries.items())
        assert not (tmp_path / "runs" / "folds.csv").exists()
        seen.append(len(entries))
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] < total, seen  # each kill was mid-build

    code, _, err = run_main("prepare.py", *ov)  # the rerun finishes the work
    assert code == 0, err
    assert snapshot(folder) == big["cache"]  # the very bytes of the uninterrupted build, cache.json included
    assert snapshot(tmp_path / "runs") == big["runs"]  # folds.csv, folds.json
