"""The whole loop on a tiny competition: prepare → train_fold → predict (stdout only CSV) → report."""

import io

import pandas as pd
import torch
from helpers import run_script

from comp.data.download import make_demo


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


def test_prepare_train_predict_report(tiny):
    ov = tiny["overrides"]
    run_script("prepare.py", *ov, check=True)
    folds = pd.read_csv(tiny["out"] / "folds.csv", dtype={"id": str})
    assert list(folds.columns) == ["id", "label", "group", "fold"] and set(folds["fold"]) == {0, 1}

    for k in (0, 1):
        res = run_script("train_fold.py", "--fold", str(k), *ov, "epochs=2", check=True)
        assert res.stdout == ""  # training logs go to stderr
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

    res = run_script("predict.py", *ov, check=True)
    sub = pd.read_csv(io.StringIO(res.stdout), dtype={"id": str})
    sample = pd.read_csv(tiny["root"] / "sample_submission.csv", dtype={"id": str})
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["id"]) == list(sample["id"])  # same ids, same order
    assert set(sub["label"]) <= {0, 1, 2}
    assert "held-out accuracy" in res.stderr  # scored against solution.csv, on stderr

    rep = run_script("report.py", *ov, check=True)
    assert "CV accuracy (out-of-fold, 2 folds)" in rep.stdout


def test_train_refuses_to_overwrite_a_trained_fold(tiny):
    ov = tiny["overrides"]
    run_script("train_fold.py", "--fold", "0", *ov, check=True)
    before = (tiny["out"] / "fold0" / "best.pt").read_bytes()
    res = run_script("train_fold.py", "--fold", "0", *ov)
    assert res.returncode == 2 and "--resume" in res.stderr
    assert (tiny["out"] / "fold0" / "best.pt").read_bytes() == before
