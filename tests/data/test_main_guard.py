"""A user's plain script without an `if __name__ == "__main__":` guard (comp.system.unguarded_main): the image
cache's forkserver workers would import it again and re-run its prepare, so the cache is built in this process
with one warning line saying why; the guard is read from the script itself, and a worker that died anyway is
told with that cause."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import FAST, ROOT, write_tiny_competition

from comp.system import usable_cpus

PLAIN = """import sys
sys.path.insert(0, {root!r})
import comp
{patch}cfg = comp.load_config(None, {overrides!r})
comp.prepare(cfg)
print("prepared")
"""
# Counts the cache's pool processes on stdout ("pool N"), so a test sees whether the parallel build ran.
POOL = """import comp.data.cache as cache
real_pool = cache.ProcessPoolExecutor
cache.ProcessPoolExecutor = lambda n, **kw: print("pool", n, flush=True) or real_pool(n, **kw)
"""


@pytest.mark.skipif(usable_cpus() < 2, reason="one core: the cache is built in this process anyway")
@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_builds_the_cache_in_this_process(tmp_path, guarded):
    # The cache's forkserver workers import the main script again, so without `if __name__ == "__main__":`
    # they re-ran its prepare and died minutes later ("out of memory?"). Now it is built here, with one
    # warning line saying why and how to get the parallel build.
    root = write_tiny_competition(tmp_path / "data", n_per_class=22)  # 75 images: over MIN_PARALLEL
    over = [*FAST, f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "data.source=competition",
            "data.solution_csv=solution.csv", f"images.cache_dir={tmp_path / 'cache'}"]
    body = PLAIN.format(root=str(ROOT), patch=POOL, overrides=over)
    if guarded:
        body = "if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in body.splitlines())
    script = tmp_path / "plain.py"
    script.write_text(body)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=str(tmp_path),
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and res.stdout.count("prepared") == 1, res.stderr[-3000:]
    said = [line for line in res.stderr.splitlines() if "guard" in line]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 75
    if guarded:
        assert said == [] and f"pool {usable_cpus()}" in res.stdout, res.stderr[-2000:]
    else:
        assert "pool" not in res.stdout
        assert said == [f"warning: images: building the cache in this process, not in {usable_cpus()} worker "
                        f"processes: {script} has no `if __name__ == \"__main__\":` guard, so each worker (forkserver "
                        f"start) would run it again from the top; put its calls under that guard for the parallel "
                        f"build"], res.stderr[-2000:]


def test_the_main_guard_is_read_from_the_script(tmp_path, monkeypatch):
    from comp import system

    cases = {"import comp\ncomp.prepare(1)\n": False, "if __name__ == '__main__':\n    main()\n": True,
             "if '__main__' == __name__:\n    main()\n": True, "if __name__ != '__main__':\n    pass\n": False,
             "def f():\n    if __name__ == '__main__':\n        pass\n": False, "this is not python(\n": True}
    for i, (text, guarded) in enumerate(cases.items()):
        (tmp_path / f"s{i}.py").write_text(text)
        assert system.has_main_guard(tmp_path / f"s{i}.py") is guarded, text
    main = type(sys)("__main__")
    main.__file__ = str(tmp_path / "s0.py")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert system.unguarded_main("spawn") == system.unguarded_main("forkserver") == tmp_path / "s0.py"
    assert system.unguarded_main("fork") is None
    main.__file__ = str(tmp_path / "s1.py")
    assert system.unguarded_main("spawn") is None and system.rerun_main("spawn") == tmp_path / "s1.py"
    main.__spec__ = type("Spec", (), {"name": "pkg.__main__"})()  # python -m pkg: multiprocessing re-runs nothing
    assert system.rerun_main("spawn") is None
    del main.__file__  # an interactive session, a notebook, python -c
    assert system.rerun_main("spawn") is None
    # A worker that died anyway: the message names the re-run as a cause where it can be one (a user's
    # script the workers import again), not for the kit's own scripts or a fork.
    from comp.data import cache

    main.__spec__, main.__file__ = None, str(tmp_path / "s1.py")
    assert "ran " + str(tmp_path / "s1.py") + " again from the top" in cache._rerun_hint("forkserver")
    assert cache._rerun_hint("fork") == ""
    main.__file__ = str(ROOT / "scripts" / "prepare.py")
    assert cache._rerun_hint("forkserver") == ""
