"""comp.pipeline and the loop a user runs, end to end.

One way to train a fold: a notebook's comp.train_fold and scripts/train_fold.py run the same library function,
so a recipe with two stages and a two-seed bag gives the same fold folder both ways, file for file (only the
run folder's own path and the wall-clock columns differ). The config is checked whole before any training. The
loop of `make demo` (prepare → train_fold → predict, stdout only CSV → report) runs once, train_fold and
predict as their own processes, as a user runs them; the demo data is laid out as a Kaggle download; a
one-epoch fold's log, figures and slim best.pt. The demo notebook: test_examples.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, ROOT, one_error, run_main, run_script, write_tiny_competition

import comp
from comp.data.download import make_demo
from comp.experiment import load_config
from comp.report.report import compare

# two stages (the first at a smaller size), a bag of two seeds: 4 runs of fold 0
RECIPE = ["seeds=[1,2]", "stages=[{image_size: 12, epochs: 1}, {epochs: 1}]", "folds.n_folds=2",
          "train.tracker=none"]
TIMING = ["seconds", "images_per_s", "data_wait_share"]  # metrics.csv's wall-clock columns
# a script's process on one thread: `make test` runs a worker per core, where more threads only contend
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _same(a: Path, b: Path, out_a: Path, out_b: Path) -> None:
    """Two files of the two fold folders hold the same thing (their own folder's path aside)."""
    if a.suffix == ".pt":
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert x.keys() == y.keys(), a
        for key in x:
            if key in ("model", "ema", "optimizer") and isinstance(x[key], dict):
                _same_state(x[key], y[key], f"{a}: {key}")
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


def _same_state(x: dict, y: dict, where: str) -> None:
    """Two (nested) state dicts have the same keys, and each tensor the same dtype, shape and bytes (bit for bit:
    -0.0 is not 0.0); any other value the same repr (an optimizer's param_groups)."""
    assert sorted(map(str, x)) == sorted(map(str, y)), where
    for k, v in x.items():
        w = y[k]
        if isinstance(v, dict):
            _same_state(v, w, f"{where}.{k}")
        elif isinstance(v, torch.Tensor):
            assert isinstance(w, torch.Tensor) and (v.dtype, v.shape) == (w.dtype, w.shape), (where, k)
            assert torch.equal(v.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8)), (where, k)
        else:
            assert repr(v) == repr(w), (where, k)


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


@pytest.mark.parametrize("override,needles", [
    ("aug.tta=[idnetity]", ["aug.tta", "'idnetity'"]),
    ("aug.valid=[{name: HorizontalFlip, prob: 0.5}]", ["aug.valid[0]", "HorizontalFlip"]),
    ("images.preprocess=[clahe, ben_graam]", ["images.preprocess[1]", "'ben_graam'"]),
    ("metric=kappa", ["'metric'", "'kappa'"]),
    ("model.name=timm/resnet_18", ["'model.name'", "'resnet_18'"]),
])
def test_a_typo_anywhere_fails_train_fold_before_training(tiny, override, needles):
    code, out, err = run_main("train_fold.py", "--fold", "0", *tiny["overrides"], override)
    one_error(code, err, *needles)
    assert not tiny["out"].exists()  # nothing trained, nothing written


def test_demo_layout(tmp_path):
    root = tmp_path / "demo"
    make_demo(root)
    train = pd.read_csv(root / "train.csv", dtype={"id": str})
    sample = pd.read_csv(root / "sample_submission.csv", dtype={"id": str})
    solution = pd.read_csv(root / "solution.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "label"] and list(sample.columns) == ["id", "label"]
    assert len(train) + len(sample) == 1797  # every digit once
    assert not set(train["id"]) & set(sample["id"])
    assert sorted(train["label"].unique()) == list(range(10))
    assert {p.stem for p in (root / "train").glob("*.png")} == set(train["id"])
    assert {p.stem for p in (root / "test").glob("*.png")} == set(sample["id"])
    assert list(solution["id"]) == list(sample["id"])
    assert not (tmp_path / ".demo.partial").exists()


def test_the_scripts_run_the_loop_as_a_user_runs_them(tiny, tmp_path):
    # The one end-to-end run of the scripts as a user runs them: where the process is what is checked, the
    # script runs as its own (`python scripts/X.py` from a checkout, a fresh interpreter, the real streams): a
    # fold trained with its stderr to a file, predict writing only CSV to stdout. prepare, the second fold, a
    # refused retrain and the report run in-process (run_main: the same script code, without paying ~8 s of
    # CPU for another interpreter's imports).
    ov = tiny["overrides"]
    code, out, err = run_main("prepare.py", *ov)
    assert code == 0, err
    folds = pd.read_csv(tiny["out"] / "folds.csv", dtype={"id": str})
    assert list(folds.columns) == ["id", "label", "group", "fold"] and set(folds["fold"]) == {0, 1}

    log = tmp_path / "fold0.log"
    with log.open("w") as f:  # `2> fold0.log`
        res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_fold.py"), "--fold", "0", *ov, "epochs=2"],
                             stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1"})
    text = log.read_text()
    assert res.returncode == 0, text[-3000:]
    assert res.stdout == ""  # training logs go to stderr
    assert "\r" not in text  # no progress-bar frames in a file...
    assert "fold 0 epoch 0: train_loss" in text and "fold 0 epoch 1: train_loss" in text  # ...the epochs' lines
    code, out, err = run_main("train_fold.py", "--fold", "1", *ov, "epochs=2")
    assert code == 0 and out == "", err

    fold0 = tiny["out"] / "fold0"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "oof.csv", "curves.png", "confusion.png"):
        assert (fold0 / name).is_file(), name
    ck = torch.load(fold0 / "best.pt", weights_only=True)
    assert "model" in ck and ck["num_classes"] == 3
    metrics = pd.read_csv(fold0 / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1] and {"train_loss", "valid_loss", "accuracy", "qwk", "lr"} <= set(metrics)
    oof = pd.read_csv(fold0 / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "label", "prob_0", "prob_1", "prob_2"]
    assert set(oof["id"]) == set(folds.loc[folds["fold"] == 0, "id"])
    assert (oof[["prob_0", "prob_1", "prob_2"]].sum(axis=1) - 1).abs().max() < 1e-4

    before = (fold0 / "best.pt").read_bytes()  # a trained fold is never overwritten without --resume
    code, _, err = run_main("train_fold.py", "--fold", "0", *ov)
    assert code == 2 and "--resume" in err
    assert (fold0 / "best.pt").read_bytes() == before

    res = run_script("predict.py", *ov, check=True, env=ONE_THREAD)
    sub = pd.read_csv(io.StringIO(res.stdout), dtype={"id": str})
    sample = pd.read_csv(tiny["root"] / "sample_submission.csv", dtype={"id": str})
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["id"]) == list(sample["id"])  # same ids, same order
    assert set(sub["label"]) <= {0, 1, 2}
    assert "held-out accuracy" in res.stderr  # scored against solution.csv, on stderr

    code, out, err = run_main("report.py", *ov)
    assert code == 0, err
    assert "CV accuracy (out-of-fold, 2 folds)" in out


C2 = (0x2C, 0xA0, 0x2C)  # matplotlib's "C2" (the metric's line in curves.png), RGB


def _pixels(png: Path, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels of `png` are within `tol` (per channel) of colour `rgb`."""
    img = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


def test_one_epoch_fold_log_figures_and_slim_best(tiny, tmp_path):
    # stderr here is not a terminal (as with `2> fold0.log`; a real file: test_the_scripts_run_the_loop...)
    code, out, err = run_main("train_fold.py", "--fold", "0", *tiny["overrides"], "model.name=timm/test_resnet")
    assert code == 0, err
    assert "\r" not in err  # no progress-bar frames...
    assert "fold 0 epoch 0: train_loss" in err  # ...the epoch's line instead

    fold = tiny["out"] / "fold0"
    best, last = fold / "best.pt", fold / "last.pt"
    assert "optimizer" not in torch.load(best, weights_only=True)
    assert "optimizer" in torch.load(last, weights_only=True)  # the resume checkpoint keeps everything
    assert best.stat().st_size < 0.6 * last.stat().st_size, (best.stat().st_size, last.stat().st_size)

    assert _pixels(fold / "curves.png", C2) > 20  # the one epoch's metric is a marker, not an invisible line
    table = compare([tiny["out"]], tmp_path / "compare.png")
    assert list(table["experiment"]) == [tiny["out"].name] and table["epochs"].tolist() == [1]
    assert _pixels(tmp_path / "compare.png", (0x1F, 0x77, 0xB4)) > 250  # C0: markers beyond the legend's
