"""The TTA out-of-fold predictions (comp.predict.oof_tta): each fold's validation images predicted as the test
set is (its best.pt, every TTA view, the ensemble's averaging), in oof.csv's format, and made again only for
the folds whose checkpoint or settings changed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_experiment

from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config
from comp.predict import oof_tta
from comp.predict.predict import predict_test


def _oracle(ex: dict, k: int, *extra: str) -> np.ndarray:
    """Fold k's validation images predicted by predict_test with fold k's best.pt, as if they were the test
    set: the way test predictions are made."""
    split = pd.read_csv(ex["out"] / "folds.csv", dtype={"id": str})
    split.loc[split["fold"] == k, ["id"]].to_csv(ex["root"] / f"oracle{k}.csv", index=False)
    cfg = load_config(None, [*ex["overrides"], *extra, f"data.test_csv=oracle{k}.csv", "data.test_images=[train]"])
    return predict_test(cfg, load_competition(cfg), paths=[ex["out"] / f"fold{k}" / "best.pt"])


def test_tta_oof_is_each_fold_predicted_as_the_test_set_and_is_cached(tmp_path):
    ex = make_experiment(tmp_path, "metric=qwk", "aug.tta=[identity,hflip,vflip]")
    cfg, out = ex["cfg"], ex["out"]
    files = oof_tta.write_tta_oof(cfg)
    split = pd.read_csv(out / "folds.csv", dtype={"id": str})
    for k, path in enumerate(files):
        assert path == out / f"fold{k}" / "oof_tta.csv"
        got = pd.read_csv(path, dtype={"id": str})
        assert list(got.columns) == list(pd.read_csv(out / f"fold{k}" / "oof.csv").columns)  # oof.csv's format
        va = split[split["fold"] == k]
        assert list(got["id"]) == list(va["id"]) and list(got["label"]) == list(va["label"])
        np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), _oracle(ex, k), atol=1e-6)

    stamps = [p.stat().st_mtime_ns for p in files]
    oof_tta.write_tta_oof(cfg)
    assert [p.stat().st_mtime_ns for p in files] == stamps  # same checkpoints and settings: reused
    torch.save(torch.load(out / "fold0" / "best.pt", weights_only=True) | {"best": 0.9}, out / "fold1" / "best.pt")
    oof_tta.write_tta_oof(cfg)
    assert files[0].stat().st_mtime_ns == stamps[0] and files[1].stat().st_mtime_ns != stamps[1]  # fold1 only
    logit = load_config(None, [*ex["overrides"], "predict.ensemble=mean_logit"])
    oof_tta.write_tta_oof(logit)  # another setting: made again, and still the test-time average
    got = pd.read_csv(files[1], dtype={"id": str}).filter(like="prob_").to_numpy()
    np.testing.assert_allclose(got, _oracle(ex, 1, "predict.ensemble=mean_logit"), atol=1e-6)

    (out / "folds.csv").unlink()
    with pytest.raises(UserError, match="folds.csv is missing"):
        oof_tta.write_tta_oof(load_config(None, [*ex["overrides"], "aug.tta=[hflip]"]))
