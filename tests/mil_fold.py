"""A tiny trained MIL fold for the tests of what reads trained MIL experiments (explain, the package):
the brain tumour replica (tests/replicas_mil.py: a study of four MR series a row, gated attention) with the
shipped config at 16 px, 3 instances a series and the 0.4 M-parameter timm/test_resnet, prepared and fold 0
trained once per test run (a module-scoped fixture calls `trained_mil_fold`)."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import ROOT, run_main
from replicas_mil import MIL_BUILDERS
from test_mil_configs import CONFIGS, tiny

_TRAINED: dict[str, dict] = {}


def trained_mil_fold(tmp_path_factory, name: str = "brain_tumor", both: bool = False) -> dict:
    """{config, overrides (predict.folds=[0] included, unless `both`), root, out, cache}: replica `name`
    prepared and its fold 0 (`both`: its two folds) trained (one thread, as the runs compared with it), once
    per test run and setting; a new dict each call."""
    key = f"{name}-{both}"
    if key not in _TRAINED:
        base = tmp_path_factory.mktemp(f"mil_{name}")
        root = MIL_BUILDERS[name](base / "data")
        config = str(ROOT / "configs" / f"{CONFIGS[name]}.yaml")
        ov = [*tiny(root, base / "run", base / "cache", name), *([] if both else ["predict.folds=[0]"])]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for args in (("prepare.py",), *(("train_fold.py", "--fold", str(k)) for k in range(1 + both))):
                code, _, err = run_main(args[0], "--config", config, *args[1:], *ov)
                assert code == 0, err[-3000:]
        finally:
            torch.set_num_threads(threads)
        _TRAINED[key] = {"config": config, "overrides": ov, "root": Path(root), "out": base / "run",
                          "cache": base / "cache"}
    return dict(_TRAINED[key])


def train_student(mil_fold: dict, tmp_path: Path, *extra: str) -> Path:
    """Fold 0 of a student of `mil_fold`'s setting on its folds, with the overrides `extra` (a teacher,
    pseudo-labels), in `tmp_path`/student; returns that out_dir."""
    import shutil

    out = tmp_path / "student"
    out.mkdir()
    shutil.copy(mil_fold["out"] / "folds.csv", out / "folds.csv")
    code, _, err = run_main("train_fold.py", "--config", mil_fold["config"], "--fold", "0", *mil_fold["overrides"],
                            f"out_dir={out}", *extra)
    assert code == 0, err[-3000:]
    return out
