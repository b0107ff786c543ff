"""Fixtures shared by the whole suite (the helpers they use are in helpers.py), and the hypothesis profile."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# One thread per test process, set before torch is imported: `make test` runs one pytest-xdist worker per
# core, and each worker's OpenMP and BLAS threads on top of that oversubscribe the cores, where OpenMP's
# spin-waiting threads made the suite's tiny tensors 3-10x slower on the 2-core CI machine (a ResNet-50
# forward pass 0.41 s against 0.075 s; two stacking tests 125 s against 5 s). The scripts a test starts as
# processes inherit it. Tests that compare runs across processes pin their threads themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's comp, installed or not
import torch  # noqa: E402
from helpers import FAST, write_tiny_competition  # noqa: E402

torch.set_num_threads(1)

# Property tests are reproducible: `make test` (and CI) runs them derandomised (the examples follow from
# each test's code) with no example database, so a run cannot fail on an example an earlier run found and
# stored. HYPOTHESIS_PROFILE=explore searches with fresh randomness (and remembers what it finds).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A tiny competition (write_tiny_competition) under tmp_path/data."""
    return write_tiny_competition(tmp_path / "data")


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    """A tiny competition and the overrides that point the demo config at it."""
    root = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "runs"
    overrides = FAST + [f"data.root={root}", f"out_dir={out}", "data.source=competition",
                        "data.solution_csv=solution.csv", "aug.tta=[identity,hflip]"]
    return {"root": root, "out": out, "overrides": overrides}
