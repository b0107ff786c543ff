"""Seed bags (`seeds`, comp.ensemble.bag): 2 seeds x 2 folds on the tiny competition, trained as
scripts/train_fold.py trains them (the script run in-process), read as one experiment: the bag's OOF is the
mean of its seeds', the test ensemble is the mean of the four models, and a fold missing a seed is refused
unless asked for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import one_error, run_main
from omegaconf import OmegaConf

from comp.data.competition import load_competition
from comp.ensemble.bag import write_bag_oof
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment.oof import oof_probs
from comp.predict.predict import predict_test
from comp.train.loop import fit

BAG = ["seeds=[42,43]"]


@pytest.fixture
def bag(tiny):
    """Fold 0 through the script (every seed in turn), fold 1 in-process, seed by seed, as --seed jobs do."""
    args = [*tiny["overrides"], *BAG]
    code, _, err = run_main("train_fold.py", "--fold", "0", *args)
    assert code == 0, err[-3000:]
    cfg = load_config(None, args)
    for seed in (42, 43):
        fit(OmegaConf.merge(cfg, {"seed": seed}), 1)
        written = write_bag_oof(cfg, 1)
        assert (written is None) == (seed == 42)  # the bag's OOF waits for its last seed
    return cfg, tiny["out"]


def test_bag_oof_ensemble_and_partial_bag(bag, tiny):
    cfg, out = bag
    for k in (0, 1):
        seeds = [pd.read_csv(out / f"fold{k}" / f"seed{s}" / "oof.csv", dtype={"id": str}) for s in (42, 43)]
        assert not np.allclose(oof_probs(seeds[0]), oof_probs(seeds[1]))  # two seeds, two models
        mean = pd.read_csv(out / f"fold{k}" / "oof.csv", dtype={"id": str})
        assert mean["id"].tolist() == seeds[0]["id"].tolist()
        assert mean["label"].tolist() == seeds[0]["label"].tolist()
        np.testing.assert_allclose(oof_probs(mean), (oof_probs(seeds[0]) + oof_probs(seeds[1])) / 2, atol=1e-6)
        assert (out / f"fold{k}" / "seed43" / "config.yaml").is_file()
        assert not (out / f"fold{k}" / "best.pt").exists()
    table, cv, n = Experiment(cfg).cv()  # the readers of fold<K>/oof.csv see one experiment
    assert n == 2 and len(table) == 2 and np.isfinite(cv)

    paths = Experiment(cfg).trained()
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "fold0/seed42/best.pt", "fold0/seed43/best.pt", "fold1/seed42/best.pt", "fold1/seed43/best.pt"]
    comp = load_competition(cfg)
    ensemble = predict_test(cfg, comp)
    singles = [predict_test(cfg, comp, paths=[p]) for p in paths]
    assert all(not np.allclose(singles[0], s) for s in singles[1:])
    np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), atol=1e-6)
    # the TTA out-of-fold predictions (qwk cut-points) of a bag: each fold's seeds averaged, in fold<K>/
    from comp.predict import oof_tta

    files = oof_tta.write_tta_oof(cfg, comp)
    assert files == [out / "fold0" / "oof_tta.csv", out / "fold1" / "oof_tta.csv"]
    tta = pd.read_csv(files[0], dtype={"id": str})
    plain = pd.read_csv(out / "fold0" / "oof.csv", dtype={"id": str})
    assert tta["id"].tolist() == plain["id"].tolist() and tta.shape == plain.shape
    assert not np.allclose(oof_probs(tta), oof_probs(plain))  # the hflip view counts

    # a fold missing a seed: refused with one error line naming it, unless the trained seeds are asked for
    (out / "fold1" / "seed43" / "best.pt").unlink()
    with pytest.raises(UserError, match=r"fold 1 of the seed bag seeds=\[42, 43\] lacks seed\(s\) \[43\]"):
        Experiment(cfg).trained()
    code, _, err = run_main("predict.py", *tiny["overrides"], *BAG)
    one_error(code, err, "fold 1", "seed(s) [43]", "--fold 1 --seed 43", "seeds=[42]")
    one = load_config(None, [*tiny["overrides"], "seeds=[42]"])
    np.testing.assert_allclose(predict_test(one, comp), np.mean([singles[0], singles[2]], axis=0), atol=1e-6)


def test_seed_outside_the_bag_is_refused(tiny):
    code, _, err = run_main("train_fold.py", "--fold", "0", "--seed", "7", *tiny["overrides"], *BAG)
    one_error(code, err, "--seed 7", "seeds=[42, 43]")
    cfg = load_config(None, [*tiny["overrides"], *BAG, "seed=7"])
    with pytest.raises(UserError, match="seed=7 is not one of the bag's seeds"):
        fit(cfg, 0)
    assert not (tiny["out"] / "fold0" / "seed7").exists()


def test_a_bag_of_values_with_their_sigma_is_the_mixture(tmp_path):
    """train.loss=laplace: the seeds' OOF value and sigma are averaged as a mixture (the mean of means; sigma from
    the mean of sigma^2 + mu^2), not column by column: the mean of the sigmas forgets the seeds' disagreement."""
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}", "seeds=[1,2]", "task=regression", "train.loss=laplace",
                             "metric=laplace_log_likelihood", "data.label_column=FVC"])
    exp = Experiment(cfg)
    for run, (mu, sd) in zip(exp.runs(0), [(100.0, 10.0), (120.0, 20.0)], strict=True):
        run.dir.mkdir(parents=True)
        pd.DataFrame({"id": ["a"], "label": [110.0], "value": [mu], "sigma": [sd]}).to_csv(run.oof, index=False)
    out = pd.read_csv(write_bag_oof(exp, 0))
    assert out["value"].iloc[0] == pytest.approx(110.0)
    assert out["sigma"].iloc[0] == pytest.approx(np.sqrt((10**2 + 100**2 + 20**2 + 120**2) / 2 - 110**2))
