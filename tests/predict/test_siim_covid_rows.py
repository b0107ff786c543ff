"""comp/predict/siim_covid.py on a replica of the SIIM-FISABIO-RSNA COVID-19 download (tests/replicas.py):
the nested test DICOMs found with their studies, and the sample's study and image rows written from
per-image 4-class outputs in the competition's PredictionString format."""

from __future__ import annotations

import numpy as np
import pytest
from replicas import siim_covid19

from comp.errors import UserError
from comp.predict.shapes import read_exact
from comp.predict.siim_covid import STUDY_WORDS, prediction_strings, study_images


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return siim_covid19(tmp_path_factory.mktemp("siim") / "siim-covid19-detection")


def _probs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, 4)) + 0.05
    return x / x.sum(1, keepdims=True)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_rows_match_sample(replica, how):
    images = study_images(replica / "test")
    probs = _probs(len(images))
    sample = read_exact(replica / "sample_submission.csv")
    out = prediction_strings(sample, images, probs, how)
    assert list(out.columns) == ["id", "PredictionString"] and list(out["id"]) == list(sample["id"])
    for rid, value in zip(out["id"], out["PredictionString"], strict=True):
        words = value.split()
        like = sample.set_index("id").loc[rid, "PredictionString"].split()
        assert len(words) == len(like) and words[::6] == like[::6]  # the sample's class words and layout
        assert all(words[k:k + 6][2:] == ["0", "0", "1", "1"] for k in range(0, len(words), 6))
        p = np.array(words[1::6], dtype=float)
        if rid.endswith("_study"):
            mine = probs[(images["study"] == rid[:-6]).to_numpy()]
            assert np.allclose(p, mine.mean(0) if how == "mean" else mine.max(0), atol=1e-5)
            assert words[::6] == list(STUDY_WORDS)
        else:
            assert np.allclose(p, probs[(images["image"] == rid[:-6]).to_numpy(), 0], atol=1e-5)


def test_missing_and_malformed(replica):
    images = study_images(replica / "test")
    sample = read_exact(replica / "sample_submission.csv")
    with pytest.raises(UserError, match="no test image"):
        prediction_strings(sample, images.iloc[1:], _probs(len(images) - 1))
    bad = sample.copy()
    bad.loc[0, "id"] = "abc"
    with pytest.raises(UserError, match="'abc': neither"):
        prediction_strings(bad, images, _probs(len(images)))
    with pytest.raises(UserError, match="probabilities"):
        prediction_strings(sample, images, _probs(len(images))[:, :3])
