"""comp.data.inspect through scripts/init.py, the config starter: a download looked at, a commented config
written with a reason for every guess, which loads and prepares as it is; never overwritten unasked."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import FAST, one_error, run_main
from omegaconf import OmegaConf
from replicas import build

from comp.experiment import load_config
from comp.pipeline import prepare


@pytest.mark.parametrize("name,expect", [
    ("aptos2019", {"layout": "csv", "id_column": "id_code", "label_column": "diagnosis",
                   "train_images": ["train_images"], "test_csv": "test.csv"}),
    ("chest_xray", {"layout": "folders", "classes": ["NORMAL", "PNEUMONIA"], "test_images": ["**/test"]}),
])
def test_init_writes_a_config_that_loads_and_prepares(tmp_path, name, expect):
    root = build(name, tmp_path / "data")
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    assert code == 0, err
    assert "data.layout" in err and out.read_text().count("\n# ") + out.read_text().count("\n  # ") >= 5
    cfg = load_config(out, [*FAST, "batch_size=4", f"out_dir={tmp_path / 'runs'}",
                            f"images.cache_dir={tmp_path / 'cache'}"])
    for key, value in expect.items():
        got = cfg.data[key]
        assert (list(got) if OmegaConf.is_list(got) else got) == value, key
    prepare(cfg)
    folds = pd.read_csv(tmp_path / "runs" / "folds.csv")
    assert len(folds) >= 20 and folds["fold"].nunique() == 2
    code, _, err = run_main("init.py", str(root), "-o", str(out))  # never overwritten without --force
    one_error(code, err, "already exists")
