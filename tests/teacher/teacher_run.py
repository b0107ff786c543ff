"""The teacher experiment the distillation and pseudo-label tests learn from: a tiny competition with both
folds trained (one epoch each), once per test process, and the students configured beside it on the
teacher's split. A helper module rather than a conftest.py: pytest imports every conftest.py as the module
`conftest`, which would hide tests/conftest.py from the test modules' `from conftest import ...`."""

from __future__ import annotations

import shutil

from helpers import FAST, write_tiny_competition

from comp.experiment import load_config
from comp.train.loop import fit

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4", "train.tracker=none"]
_TEACHER: dict = {}


def config(tiny: dict, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


def trained_teacher(tmp_path_factory) -> dict:
    """A tiny competition with a two-fold teacher experiment trained on it; shared by the modules of the
    process (a test that changes the teacher works on a copy of its folder)."""
    if not _TEACHER:
        tmp = tmp_path_factory.mktemp("teacher")
        root = write_tiny_competition(tmp / "data")
        tiny = {"root": root, "overrides": FAST + [f"data.root={root}", "data.source=competition",
                                                    "data.solution_csv=solution.csv", "aug.tta=[identity]"]}
        cfg = config(tiny, f"out_dir={tmp / 'teacher'}")
        for k in range(2):
            fit(cfg, k)
        _TEACHER.update({"tiny": tiny, "cfg": cfg, "out": tmp / "teacher", "tmp": tmp})
    return dict(_TEACHER)


def student(teacher: dict, name: str, *extra: str):
    """The config of a student in its own folder beside the teacher, on the teacher's split."""
    out = teacher["tmp"] / name
    out.mkdir(exist_ok=True)
    shutil.copy(teacher["out"] / "folds.csv", out / "folds.csv")  # the teacher's split
    return config(teacher["tiny"], f"out_dir={out}", *extra)
