"""comp/predict/siim_covid.py on a replica of the SIIM-FISABIO-RSNA COVID-19 download (tests/replicas.py):
the nested test DICOMs found with their studies, and the sample's study and image rows written from
per-image 4-class outputs in the competition's PredictionString format."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from replicas import siim_covid19

from comp.errors import UserError
from comp.predict.shapes import read_exact
from comp.predict.siim_covid import STUDY_COLUMNS, STUDY_WORDS, image_labels, prediction_strings, study_images


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return siim_covid19(tmp_path_factory.mktemp("siim") / "siim-covid19-detection")


def _probs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, 4)) + 0.05
    return x / x.sum(1, keepdims=True)


def test_study_images_nested(replica):
    images = study_images(replica / "test")
    sample = read_exact(replica / "sample_submission.csv")
    want = {i[:-6] for i in sample["id"] if i.endswith("_image")}
    assert set(images["image"]) == want
    assert set(images["study"]) == {i[:-6] for i in sample["id"] if i.endswith("_study")}
    assert images.groupby("study")["image"].count().max() == 2  # a study of two images


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


def test_missing_and_malformed(replica, tmp_path):
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
    flat = tmp_path / "test"
    shutil.copytree(replica / "test", flat)
    next(flat.rglob("*.dcm")).rename(flat / "loose.dcm")
    with pytest.raises(UserError, match="loose.dcm: not at"):
        study_images(flat)


def test_image_labels_take_their_study(replica):
    """Each image of train_image_level.csv gets its study's one-hot class and the study as its group."""
    from comp.data.competition import read_csv

    train = image_labels(replica)
    studies = read_csv(replica / "train_study_level.csv", [])
    images = read_csv(replica / "train_image_level.csv", [])
    assert list(train["id"]) == [i.removesuffix("_image") for i in images["id"]]
    assert list(train["group"]) == list(images["StudyInstanceUID"])
    truth = studies.set_index(studies["id"].str.removesuffix("_study"))[list(STUDY_COLUMNS)].astype(int)
    assert list(train["label"]) == [int(truth.loc[s].to_numpy().argmax()) for s in train["group"]]
    assert all(p.endswith(f"{i}.dcm") and f"/{g}/" in p for i, p, g in zip(train["id"], train["path"], train["group"],
                                                                        strict=True))


def test_image_labels_refuse(replica, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(replica, root)
    studies = (root / "train_study_level.csv").read_text().splitlines()
    (root / "train_study_level.csv").write_text("\n".join([studies[0], *studies[2:]]) + "\n")
    with pytest.raises(UserError, match="has no row in train_study_level.csv"):
        image_labels(root)
    cells = studies[1].split(",")
    (root / "train_study_level.csv").write_text("\n".join([studies[0], ",".join([cells[0], "1", "1", "0", "0"]),
                                                          *studies[2:]]) + "\n")
    with pytest.raises(UserError, match="row 2 is not one-hot"):
        image_labels(root)
