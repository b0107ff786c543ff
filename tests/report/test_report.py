"""The CV report (comp.report.report, scripts/report.py) on trained folds: the CV table, the OOF report and
confusion figure, and the comparison figure of several experiments. The folds are trained in-process; the
script runs in-process too (conftest.run_main), as `python scripts/report.py ...` would."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import run_main

from comp.experiment import load_config
from comp.experiment.oof import oof_probs
from comp.metrics import METRICS
from comp.train.loop import fit

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4", "epochs=2"]


@pytest.fixture
def experiments(tiny):
    """Two experiments on the tiny competition: `a` with both folds, `b` (another lr) with fold 0."""
    a = tiny["overrides"] + SMALL + [f"out_dir={tiny['out'] / 'a'}"]
    b = tiny["overrides"] + SMALL + [f"out_dir={tiny['out'] / 'b'}", "optim.lr=0.0003"]
    for k in (0, 1):
        fit(load_config(None, a), k)
    fit(load_config(None, b), 0)
    return a, b


def test_report_cv_table_oof_report_and_compare(experiments, tiny):
    a, _ = experiments
    code, out, err = run_main("report.py", *a)
    assert code == 0, err
    oof = pd.concat([pd.read_csv(tiny["out"] / "a" / f"fold{k}" / "oof.csv") for k in (0, 1)])
    cv = METRICS["accuracy"](oof["label"].to_numpy(), oof_probs(oof))
    assert f"CV accuracy (out-of-fold, 2 folds): {cv:.4f}" in out
    table = out.split("CV accuracy")[0]
    assert "balanced_accuracy" in table and "qwk" in table and "auc" in table
    assert "out-of-fold classification report" in out and "macro avg" in out
    for name in ("0", "1", "2"):  # one row per class
        assert any(line.split()[:1] == [name] for line in out.splitlines())
    assert (tiny["out"] / "a" / "oof_confusion.png").stat().st_size > 0

    fig = tiny["out"] / "compare.png"
    code, out, err = run_main("report.py", "--compare", str(tiny["out"] / "a"), str(tiny["out"] / "b"),
                            "--labels", "lr 3e-3", "lr 3e-4", "-o", str(fig))
    assert code == 0, err
    assert fig.stat().st_size > 0
    lines = out.splitlines()
    assert "CV accuracy (out-of-fold)" in lines[0]
    assert lines[1].split()[:4] == ["lr", "3e-3", "2", "2"] and lines[2].split()[:4] == ["lr", "3e-4", "1", "2"]
    assert np.isclose(float(lines[1].split()[-1]), cv, atol=1e-4)

    # a metric where lower is better: each fold's best epoch is its lowest log loss, not its highest
    code, out, err = run_main("report.py", "--compare", str(tiny["out"] / "a"), "--metric", "log_loss", "-o", str(fig))
    assert code == 0, err
    lowest = np.mean([pd.read_csv(tiny["out"] / "a" / f"fold{k}" / "metrics.csv")["log_loss"].min() for k in (0, 1)])
    assert np.isclose(float(out.splitlines()[1].split()[3]), lowest, atol=1e-4), out


def test_report_errors_name_the_culprit(tiny):
    code, _, err = run_main("report.py", "--compare", str(tiny["root"]))
    assert code == 2 and err.startswith("error: ") and str(tiny["root"]) in err and "Traceback" not in err
    code, _, err = run_main("report.py", "--compare", str(tiny["root"]), "--labels", "x", "y")
    assert code == 2 and "--labels" in err
    code, _, err = run_main("report.py", *tiny["overrides"], f"out_dir={tiny['out'] / 'none'}")
    assert code == 2 and "no fold" in err
