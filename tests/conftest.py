"""Shared fixtures: a tiny competition in the Kaggle CSV layout, and helpers to run the scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

# Property tests are reproducible: `make test` (and CI) runs them derandomised (the examples follow from
# each test's code) with no example database, so a run cannot fail on an example an earlier run found and
# stored. HYPOTHESIS_PROFILE=explore searches with fresh randomness (and remembers what it finds).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Tiny and fast: 16 px images, 2 folds, a few steps, no worker processes, and timm's 0.37 M-parameter
# test_resnet (a 1.5 MB best.pt where resnet18's is 45 MB, its last.pt 134 MB): the kit's own ResNets are
# proven in test_models.py and trained end to end where a test names them.
FAST = ["epochs=1", "batch_size=8", "image_size=16", "num_workers=0", "folds.n_folds=2",
        "train.recovery_every=0", "model.name=timm/test_resnet"]


def write_tiny_competition(root: Path, n_per_class: int = 10, n_test: int = 9, classes=(0, 1, 2), size=24,
                           seed: int = 0) -> Path:
    """A competition laid out like a Kaggle CSV download: train.csv, train/, test/, sample_submission.csv,
    solution.csv. Each class has its own mean colour, so a model can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows, test_rows = [], []
    for c_i, c in enumerate(classes):
        for k in range(n_per_class):
            img = np.clip(rng.normal(60 + 70 * c_i, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "train" / f"img_{c_i}_{k:03d}.png"), img)
            rows.append((f"img_{c_i}_{k:03d}", c))
    for k in range(n_test):
        c_i = k % len(classes)
        img = np.clip(rng.normal(60 + 70 * c_i, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "test" / f"test_{k:03d}.png"), img)
        test_rows.append((f"test_{k:03d}", classes[c_i]))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame(test_rows, columns=["id", "label"])
    test.assign(label=classes[0]).to_csv(root / "sample_submission.csv", index=False)
    test.to_csv(root / "solution.csv", index=False)
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    """A tiny competition and the overrides that point the demo config at it."""
    root = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "runs"
    overrides = FAST + [f"data.root={root}", f"out_dir={out}", "data.source=competition",
                        "data.solution_csv=solution.csv", "aug.tta=[identity,hflip]"]
    return {"root": root, "out": out, "overrides": overrides}


def run_script(name: str, *args: str, check: bool = False, env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run scripts/<name> with the test interpreter, capturing stdout and stderr separately."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                         env=e, timeout=timeout, cwd=str(ROOT))
    if check and res.returncode != 0:
        raise AssertionError(f"{name} {args} exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


def run_in_process(name: str, *argv: str) -> tuple[int, str, str]:
    """`python scripts/<name> ARGV` in this process (runpy: the script's own parser and comp.cli.main, without
    paying another torch import); (exit code, stdout, stderr)."""
    import io
    import runpy
    from contextlib import redirect_stderr, redirect_stdout

    old = sys.argv, list(sys.path)
    sys.argv, out, err = [str(ROOT / "scripts" / name), *argv], io.StringIO(), io.StringIO()
    sys.path.insert(0, str(ROOT / "scripts"))  # as `python scripts/<name>` has it
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv, sys.path[:] = old
    return code, out.getvalue(), err.getvalue()


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one `error:` line naming the culprit, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
