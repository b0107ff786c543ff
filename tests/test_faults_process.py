"""Process faults: scripts/prepare.py and scripts/predict.py killed (SIGKILL, SIGTERM, SIGINT) at random
moments and at the worst ones, then run again: the rerun finishes with exactly the result of a run never
interrupted, and no file is ever left half-written (a cache entry, folds.csv, the --save-probs file:
each appears whole by an atomic rename, or not at all). The CSV that predict.py prints to stdout is
redirected by the user's shell, which is the user's business (`> x.tmp && mv x.tmp x` in the Makefile).

train_fold.py killed anywhere and resumed bit for bit: tests/test_resume.py. A cache build killed at a
chosen entry: tests/test_data_cache.py::test_killed_build_resumes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import COMMON, ROOT, run_main, trained_fixture, write_tiny_competition

from comp.data.cache import cache_folder
from comp.experiment import load_config
from comp.pipeline import prepare

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(code_or_script: str, *argv: str, log: Path) -> subprocess.Popen:
    """A script (or `-c` code) in its own session, so its worker processes get the signal with it."""
    cmd = [sys.executable, *(["-c", code_or_script] if "\n" in code_or_script else
                             [str(ROOT / "scripts" / code_or_script)]), *argv]
    with open(log, "a") as f:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=ENV, cwd=str(ROOT),
                                start_new_session=True)


def signal_group(proc: subprocess.Popen, sig: int) -> int:
    """`sig` to the whole process group, as a terminal's Ctrl-C or a job scheduler does; the exit code."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the process did not end after {signal.Signals(sig).name}") from None


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    return {"base": base, "overrides": ov, "cache": files(cache_folder(ref)), "runs": files(base / "ref_runs")}


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
        now = files(folder)
        entries = {k: v for k, v in now.items() if not Path(k).name.startswith(".")}
        assert all(big["cache"][k] == v for k, v in entries.items())
        assert not (tmp_path / "runs" / "folds.csv").exists()
        seen.append(len(entries))
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] < total, seen  # each kill was mid-build

    code, _, err = run_main("prepare.py", *ov)  # the rerun finishes the work
    assert code == 0, err
    assert files(folder) == big["cache"]  # the very bytes of the uninterrupted build, cache.json included
    assert files(tmp_path / "runs") == big["runs"]  # folds.csv, folds.json


# --- predict --save-probs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    ex = trained_fixture(tmp_path_factory, "predict_kill")
    ref = {}
    for suffix in (".csv", ".npy"):
        path = ex["base"] / f"ref{suffix}"
        code, out, err = run_main("predict.py", *ex["overrides"], "--save-probs", str(path))
        assert code == 0, err
        ref[suffix] = path.read_bytes()
    ex["ref"], ex["stdout"] = ref, out
    return ex


INJECT = """
import os, signal, sys, runpy
sys.path[:0] = [{scripts!r}, {root!r}]
{patch}
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""
PATCHES = {
    # SIGTERM while the folds predict (Python's default: the process ends at once)
    "SIGTERM mid-inference": """
import comp.predict.predict as P
real = P.forward_views
def forward_views(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
P.forward_views = forward_views
""",
    # SIGKILL with the temporary file half written (comp.io opens every file the kit writes)
    "SIGKILL mid-write": """
import comp.io as IO
real_open = IO._open
class Half:
    def __init__(self, f): self.f = f
    def write(self, b):
        self.f.write(bytes(b)[: len(b) // 2]); self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
def _open(p, mode='r', *a, **k):
    f = real_open(p, mode, *a, **k)
    return Half(f) if str(p).endswith('.tmp') else f
IO._open = _open
""",
    # SIGKILL with the temporary file whole, just before its rename
    "SIGKILL before the rename": """
real = os.replace
def replace(src, dst):
    if str(dst) == {probs!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
""",
}


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_predict_killed_leaves_the_probabilities_whole_or_as_they_were(trained, tmp_path, suffix):
    probs = tmp_path / f"probs{suffix}"
    earlier = b"the probabilities of an earlier run"
    argv = [*trained["overrides"], "--save-probs", str(probs)]
    script = str(ROOT / "scripts" / "predict.py")
    cases = ["SIGTERM mid-inference", "SIGKILL mid-write", "SIGKILL before the rename"]
    if suffix == ".npy":
        cases = cases[1:]  # mid-inference is the same for both
    for name in cases:
        probs.write_bytes(earlier)
        code = INJECT.format(scripts=str(ROOT / "scripts"), root=str(ROOT), script=script, argv=argv,
                             patch=PATCHES[name].replace("{probs!r}", repr(str(probs))))
        p = start(code, log=tmp_path / "stderr.log")
        rc = p.wait(120)
        assert rc in (-signal.SIGKILL, -signal.SIGTERM), (name, rc, (tmp_path / "stderr.log").read_text()[-2000:])
        assert probs.read_bytes() == earlier, name  # not a byte of the interrupted run in it

    # a kill at a random moment: whatever it interrupts, the file is the earlier one or the new one, whole
    probs.write_bytes(earlier)
    p = start("predict.py", *argv, log=tmp_path / "stderr.log")
    time.sleep(random.Random(suffix).uniform(1.0, 6.0))
    signal_group(p, signal.SIGKILL)
    assert probs.read_bytes() in (earlier, trained["ref"][suffix])

    code, out, err = run_main("predict.py", *argv)  # the rerun: the uninterrupted run's file, no leftovers
    assert code == 0, err
    assert probs.read_bytes() == trained["ref"][suffix] and out == trained["stdout"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([probs.name, "stderr.log"])
