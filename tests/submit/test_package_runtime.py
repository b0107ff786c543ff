"""The offline package's run-time estimate (comp.submit.package.estimate_runtime): made by default for a code
competition with a hidden test size, from two timed runs of the packaged infer.py as a notebook runs it (a
process of its own: its start and imports are the fixed cost it measures), and a warning when the hidden
test set would not fit the limit."""

from __future__ import annotations

import kaggle_env
from helpers import make_experiment

from comp.submit.package import build_package

logged_out = kaggle_env.logged_out  # the fixture: packaging without --id never asks kaggle.com who runs the test


def test_the_run_time_estimate_warns_when_the_hidden_test_set_would_not_fit(tmp_path, logged_out, capsys):
    ex = make_experiment(tmp_path, "data.code_competition=true", "data.hidden_test_size=100000",
                         "data.runtime_limit_hours=0.001", "data.test_csv=sample_submission.csv")
    build_package(ex["cfg"], tmp_path / "pkg")  # a code competition with a hidden size: estimated by default
    err = capsys.readouterr().err
    assert "warning: estimated run time of infer.py on 100000 hidden test images" in err, err
    assert "over 50% of the limit" in err and "ms/image" in err
    capsys.readouterr()
    build_package(ex["cfg"], tmp_path / "pkg2", estimate=False)
    assert "estimated run time" not in capsys.readouterr().err
