"""comp.pipeline: one way to train a fold. A notebook's comp.train_fold and scripts/train_fold.py run the same
library function, so a recipe with two stages and a two-seed bag gives the same fold folder both ways, file
for file (only the run folder's own path and the wall-clock columns differ)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from helpers import FAST, run_main, write_tiny_competition

import comp
from comp.experiment import load_config

# two stages (the first at a smaller size), a bag of two seeds: 4 runs of fold 0
RECIPE = ["seeds=[1,2]", "stages=[{image_size: 12, epochs: 1}, {epochs: 1}]", "folds.n_folds=2",
          "train.tracker=none"]
TIMING = ["seconds", "images_per_s", "data_wait_share"]  # metrics.csv's wall-clock columns


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _same(a: Path, b: Path, out_a: Path, out_b: Path) -> None:
    """Two files of the two fold folders hold the same thing (their own folder's path aside)."""
    if a.suffix == ".pt":
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert x.keys() == y.keys(), a
        for key in x:
            if key in ("model", "ema", "optimizer") and isinstance(x[key], dict):
                assert repr(_tensors(x[key])) == repr(_tensors(y[key])), (a, key)
            elif key == "config":  # paths inside it (out_dir, a stage's model.pretrained) are the folder's own
                assert json.dumps(x[key]).replace(str(out_a), "OUT") == json.dumps(y[key]).replace(str(out_b), "OUT")
            elif key == "history":
                keep = [[{k: v for k, v in row.items() if k not in TIMING} for row in h] for h in (x[key], y[key])]
                assert keep[0] == keep[1], a
            elif key not in ("partial", "rng"):
                assert repr(x[key]) == repr(y[key]), (a, key)
    elif a.name == "metrics.csv":
        pd.testing.assert_frame_equal(pd.read_csv(a).drop(columns=TIMING), pd.read_csv(b).drop(columns=TIMING))
    elif a.suffix in (".yaml", ".json"):
        assert a.read_text().replace(str(out_a), "OUT") == b.read_text().replace(str(out_b), "OUT"), a
    else:
        assert a.read_bytes() == b.read_bytes(), a


def _tensors(state: dict) -> list:
    out = []
    for k, v in sorted(state.items(), key=lambda kv: str(kv[0])):
        out.append((k, _tensors(v) if isinstance(v, dict) else v.tolist() if isinstance(v, torch.Tensor) else v))
    return out


def test_the_api_and_the_script_train_the_same_fold_with_stages_and_a_seed_bag(tmp_path):
    root = write_tiny_competition(tmp_path / "data", n_per_class=6, n_test=3)
    common = [*FAST, *RECIPE, f"data.root={root}", "data.source=competition"]
    out_a, out_b = tmp_path / "api", tmp_path / "script"
    cfg = load_config(None, [*common, f"out_dir={out_a}"])
    results = comp.train_fold(cfg, 0)  # what a notebook calls
    assert [r["dir"] for r in results] == [out_a / "fold0" / "seed1", out_a / "fold0" / "seed2"]
    code, _, err = run_main("train_fold.py", "--fold", "0", *common, f"out_dir={out_b}")
    assert code == 0, err
    a, b = _files(out_a), _files(out_b)
    assert sorted(a) == sorted(b)
    runs = ["fold0/seed1/stage1", "fold0/seed1", "fold0/seed2/stage1", "fold0/seed2"]
    for run in runs:  # every run of the recipe: stage 1 and the final stage of each seed
        assert {f"{run}/{n}" for n in ("best.pt", "last.pt", "metrics.csv", "oof.csv", "config.yaml")} <= set(a)
    assert "fold0/oof.csv" in a and json.loads(a["fold0/seed1/stage1/done.json"].read_text())["of"] == 2
    for name in a:
        _same(a[name], b[name], out_a, out_b)
