"""comp.train.tabular (scripts/tabular.py) on the OSIC replica, in process: prepare (the folds by patient) ->
each fold fitted with the Laplace head -> CV -> the submission in the sample's Patient_Week, FVC, Confidence
rows, validated against the sample and equal to the mixture of the folds' predictions; scripts/init.py's
config of the download runs the same way; the image scripts refuse the layout in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import one_error, run_main
from replicas import osic

from comp.data.visits import load_visits
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.tasks import Task
from comp.train.tabular import _outputs, predict_visits

OSIC = str(Path(__file__).resolve().parents[2] / "configs" / "osic.yaml")


@pytest.mark.parametrize("loss", ["laplace", "gaussian_nll"])
def test_osic_replica_end_to_end(tmp_path, loss):
    root = osic(tmp_path / "data")
    over = [f"data.root={root}", f"out_dir={tmp_path / 'run'}", "folds.n_folds=3", "epochs=40", f"train.loss={loss}"]
    assert run_main("prepare.py", "--config", OSIC, *over)[0] == 0  # the tables checked, the folds written
    cfg = load_config(OSIC, over)
    exp = Experiment(cfg)
    folds = pd.read_csv(exp.split.csv)
    assert folds.groupby("group")["fold"].nunique().max() == 1 and folds["fold"].nunique() == 3  # by patient
    code, out, err = run_main("tabular.py", "--config", OSIC, *over)
    assert code == 0, err[-2000:]
    assert "CV laplace_log_likelihood" in out and "last 3 visits" in out
    sub = pd.read_csv(exp.file("submission"))
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == ["Patient_Week", "FVC", "Confidence"] and list(sub["Patient_Week"]) == list(
        sample["Patient_Week"])
    assert np.isfinite(sub[["FVC", "Confidence"]].to_numpy()).all() and (sub["Confidence"] > 0).all()
    assert sub["FVC"].between(1000, 4000).all()  # FVC in ml, near the replica's 2000-3000
    visits = load_visits(cfg)
    ckpts = [torch.load(exp.fold(k).best, weights_only=True) for k in range(3)]  # plain values: weights_only
    each = [_outputs(c, visits.test) for c in ckpts]
    task = Task.from_meta(ckpts[0]["task"])
    assert task.loss_name == loss and task.output_columns() == ["value", "sigma"]
    np.testing.assert_allclose(sub[["FVC", "Confidence"]].to_numpy(), task.mix(each), rtol=1e-6)
    summary = json.loads(exp.file("visits_cv").read_text())
    assert set(summary["cv"]) == {"all", "last3"} and all(np.isfinite(v) for v in summary["cv"].values())
    oof = pd.read_csv(exp.fold(0).oof)
    assert list(oof.columns) == ["id", "label", "value", "sigma"]
    if loss != "laplace":
        return
    # what a new user does next (the new-user check found submit.py refusing the layout)
    code, out, err = run_main("report.py", "--config", OSIC, *over)
    assert code == 0 and "last 3 visits (the rows Kaggle scored" in out and f"{summary['cv']['last3']:.4f}" in out
    code, _, err = run_main("submit.py", "--config", OSIC, str(exp.file("submission")), "--dry-run", *over)
    assert code == 0 and "valid (" in err, err[-2000:]
    sub.drop(index=3).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = run_main("submit.py", "--config", OSIC, str(tmp_path / "short.csv"), "--dry-run", *over)
    one_error(code, err, sub["Patient_Week"].iloc[3])  # the missing row named


def test_init_writes_the_visits_config_that_fits_and_predicts(tmp_path):
    """OSIC as a new user meets it: init.py on the download, then tabular.py on the config it wrote."""
    root = osic(tmp_path / "data")
    written = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(written))
    assert code == 0, err[-2000:]
    over = [f"out_dir={tmp_path / 'run'}", "folds.n_folds=2", "epochs=5"]
    code, _, err = run_main("tabular.py", "--config", str(written), *over)
    assert code == 0, err[-2000:]
    assert len(pd.read_csv(tmp_path / "run" / "submission.csv")) == len(pd.read_csv(root / "sample_submission.csv"))


def test_the_image_scripts_and_an_untrained_fold_are_refused_in_one_line(tmp_path):
    root = osic(tmp_path / "data")
    over = [f"data.root={root}", f"out_dir={tmp_path / 'run'}", "folds.n_folds=2", "epochs=2"]
    one_error(*run_main("train_fold.py", "--config", OSIC, "--fold", "0", *over)[::2], "data.layout=visits",
              "scripts/tabular.py")
    one_error(*run_main("tabular.py", "--config", OSIC, "train.loss=mse", "metric=mae", *over)[::2], "'train.loss'",
              "laplace | gaussian_nll")
    assert run_main("tabular.py", "--config", OSIC, "--fold", "0", *over)[0] == 0
    assert not (tmp_path / "run" / "submission.csv").exists()  # waits for every fold
    with pytest.raises(UserError, match="fold1/best.pt is missing"):
        predict_visits(load_config(OSIC, over))
