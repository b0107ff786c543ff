"""The run folder's trained folds (comp.experiment.Experiment.trained): a partial ensemble is never made
silently; it is refused naming the folds trained and the override that asks for them, and every prediction
says what it ensembles."""

from __future__ import annotations

import pytest
from helpers import make_experiment

from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.predict.predict import predict_test


def test_a_partial_ensemble_is_refused_unless_named_and_every_prediction_says_what_it_ensembles(tmp_path, capsys):
    ex = make_experiment(tmp_path, n_folds=3)
    (ex["out"] / "fold1" / "best.pt").unlink()
    (ex["out"] / "fold2" / "best.pt").unlink()
    with pytest.raises(UserError, match=r"1 of 3 folds trained .*folds \[0\].*predict.folds=\[0\]"):
        Experiment(ex["cfg"]).trained()
    with pytest.raises(UserError, match=r"fold\(s\) \[2\] of predict.folds have no best.pt"):
        Experiment(load_config(None, [*ex["overrides"], "predict.folds=[0,2]"])).trained()
    with pytest.raises(UserError, match="predict.folds"):
        load_config(None, [*ex["overrides"], "predict.folds=[3]"])  # folds.n_folds=3: 0..2
    capsys.readouterr()
    probs = predict_test(load_config(None, [*ex["overrides"], "predict.folds=[0]"]), ex["comp"])
    assert probs.shape == (len(ex["comp"].test), 3)
    assert "ensemble: 1 of 3 folds (fold0) x 2 TTA view(s)" in capsys.readouterr().err
