"""scripts/predict.py killed (SIGKILL, SIGTERM) at random moments and at the worst ones, then run again: the
--save-probs file is never left half-written (it appears whole by an atomic rename, or not at all) and the
rerun writes exactly what a run never interrupted writes. The CSV that predict.py prints to stdout is
redirected by the user's shell, which is the user's business (`> x.tmp && mv x.tmp x` in the Makefile).

The script runs as a separate process here: a signal, or a kill, ends the process itself.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
from faults import signal_group, start
from helpers import ROOT, run_main, trained_fixture

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    ex = trained_fixture(tmp_path_factory, "predict_killed")
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
