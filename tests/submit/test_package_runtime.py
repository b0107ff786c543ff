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


def test_a_served_competition_without_its_public_test_images_is_packaged_unestimated(tmp_path, logged_out, capsys):
    # a served competition's items come with the gateway's calls: its listing may name images not downloaded
    ex = make_experiment(tmp_path, "data.code_competition=true", "data.hidden_test_size=1000",
                         "data.test_csv=sample_submission.csv",
                         "data.inference_server=kaggle_evaluation.tiny_inference_server.TinyInferenceServer")
    for f in (ex["root"] / "test").iterdir():
        f.unlink()
    pkg = build_package(ex["cfg"], tmp_path / "pkg")
    err = capsys.readouterr().err
    assert "warning: run time not estimated: " in err and "failed on a sample of 1 test image(s)" in err
    assert (pkg / "serve.py").is_file() and "import serve; TinyInferenceServer(serve.predictor(" in err
