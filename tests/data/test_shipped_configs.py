"""The shipped configs of the four single-label layouts (APTOS 2019, DR 2015, chest X-ray, C-NMC 2019), each on
a replica of its real download (tests/replicas.py), run as a user runs them: prepare.py (checks, cache,
folds), a few steps of fold 0, and a submission in the competition's encoding, scored where the answers are
known. The configs of other tasks: tests/data/test_task_configs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT, run_main
from replicas import BUILDERS, build, overrides

from comp.data.competition import load_competition
from comp.experiment import load_config
from comp.predict.submission import make_submission
from comp.train import fit

NAMES = list(BUILDERS)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("replicas")
    return {name: build(name, base / name) for name in NAMES}


def cfg_for(name: str, root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides(root, out, FAST), *extra])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_prepare_train_predict(replicas, tmp_path, name):
    """The shipped config on its replica: prepare.py (checks, cache, folds), a few steps of fold 0, and a
    submission in the competition's encoding, scored where the answers are known."""
    root = replicas[name]
    cache = tmp_path / "cache"
    out = tmp_path / "runs"
    ov = [*overrides(root, out, FAST), f"images.cache_dir={cache}"]
    code, _, err = run_main("prepare.py", "--config", str(ROOT / "configs" / f"{name}.yaml"), *ov)
    assert code == 0, err[-3000:]
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    comp_cfg = cfg_for(name, root, out, f"images.cache_dir={cache}", "predict.folds=[0]")  # fold 0 alone
    entries = list(cache.rglob(f"*.{comp_cfg.images.cache_format}"))
    comp = load_competition(comp_cfg)
    assert len(entries) == len(comp.train) + len(comp.test)  # every image cached once

    result = fit(comp_cfg, 0)
    assert np.isfinite(result["best"]) and (out / "fold0" / "best.pt").is_file()
    sub = make_submission(comp_cfg)
    sample_ids = [str(i) for i in comp.test["id"]]
    assert sorted(sub.frame.iloc[:, 0].astype(str)) == sorted(sample_ids)
    assert set(sub.frame.iloc[:, 1].astype(str)) <= {str(v) for v in comp.label_values}
    if name in ("chest_xray", "cnmc2019"):  # labelled held-out sets
        assert sub.score is not None and 0 <= sub.score <= 1
