"""comp/data/siim_covid.py on a replica of the SIIM-FISABIO-RSNA COVID-19 download (tests/replicas.py): the
nested study/series/image DICOMs, each training image with its study's class and group, the sample's ids."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from replicas import siim_covid19

from comp.data.siim_covid import STUDY_COLUMNS, check_sample, image_labels, study_images
from comp.errors import UserError
from comp.predict.shapes import read_exact


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return siim_covid19(tmp_path_factory.mktemp("siim") / "siim-covid19-detection")


def test_study_images_nested(replica):
    images = study_images(replica / "test")
    sample = read_exact(replica / "sample_submission.csv")
    want = {i[:-6] for i in sample["id"] if i.endswith("_image")}
    assert set(images["image"]) == want
    assert set(images["study"]) == {i[:-6] for i in sample["id"] if i.endswith("_study")}
    assert images.groupby("study")["image"].count().max() == 2  # a study of two images


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


def test_study_images_refuse_a_flat_file(replica, tmp_path):
    flat = tmp_path / "test"
    shutil.copytree(replica / "test", flat)
    next(flat.rglob("*.dcm")).rename(flat / "loose.dcm")
    with pytest.raises(UserError, match="loose.dcm: not at"):
        study_images(flat)


def test_check_sample(replica):
    images = study_images(replica / "test")
    test = pd.DataFrame({"id": images["image"], "path": images["path"], "row": images["study"]})
    path = replica / "sample_submission.csv"
    ids = read_exact(path)["id"]
    check_sample(path, ids, test)
    with pytest.raises(UserError, match="1 of .* e.g. 'nope_image'"):
        check_sample(path, pd.concat([ids, pd.Series(["nope_image"])], ignore_index=True), test)
