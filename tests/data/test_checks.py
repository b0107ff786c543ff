"""comp.data.checks, the checks and cuts of the tables a new user's data needs: a class that is a slip of
another (`Fundus` beside `fundus`, a class folder spelt two ways; `Fundus ` is `Fundus`), an Excel `;` CSV
read and a `;` sample submission refused, the sample submission checked at prepare before any slow work,
and smoke mode (data.limit: a few images per class, never mixed with a full run's folds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_config

from comp.config import HASHED_KEYS, config_hash
from comp.data.cache import cache_folder
from comp.data.checks import near_duplicate
from comp.data.competition import load_competition
from comp.data.folds import load_or_make_folds
from comp.errors import UserError
from comp.experiment import Experiment
from comp.pipeline import prepare


def _relabel(root: Path, rows: dict[int, str], header: str = "id,label") -> None:
    df = pd.read_csv(root / "train.csv", dtype=str)
    df["label"] = df["label"].map({"0": "Fundus", "1": "Retina", "2": "Other"})
    for i, v in rows.items():
        df.loc[i, "label"] = v
    df.columns = header.split(",")
    df.to_csv(root / "train.csv", index=False)


def test_trailing_space_in_label_and_header_is_the_same_class(tiny_root):
    _relabel(tiny_root, {0: "Fundus ", 1: " Fundus"}, header="id ,label ")
    comp = load_competition(tiny_config(tiny_root))
    assert comp.classes == ["Fundus", "Other", "Retina"] and (comp.train["label"] == 0).sum() == 10


def test_rare_near_duplicate_class_is_an_error_naming_rows(tiny_root):
    _relabel(tiny_root, {2: "fundus", 5: "Fundis"})  # csv rows 4 and 7; n_folds=2 > each one's 1 image
    with pytest.raises(UserError) as e:
        load_competition(tiny_config(tiny_root))
    msg = str(e.value)
    assert "did you mean 'Fundus'?" in msg and "row(s) " in msg and "\n" not in msg
    assert "'Fundis'" in msg and "row(s) 7" in msg or "'fundus'" in msg and "row(s) 4" in msg
    comp = load_competition(tiny_config(tiny_root, "data.classes=[Fundus,fundus,Fundis,Other,Retina]"))  # real: say so
    assert comp.num_classes == 5


def test_common_near_duplicate_is_a_warning_and_numbers_are_never_slips(tiny_root, capsys):
    _relabel(tiny_root, {i: "fundus" for i in range(3)})  # 3 images >= n_folds=2: may be real
    comp = load_competition(tiny_config(tiny_root))
    assert comp.num_classes == 4
    assert "warning: class 'fundus' (3 image(s)" in capsys.readouterr().err
    assert near_duplicate("1", ["0", "2"]) is None and near_duplicate("hem", ["all"]) is None
    assert near_duplicate("NORMAL ", ["NORMAL"]) == "NORMAL" and near_duplicate("Pneumonia", ["PNEUMONIA"])
    assert near_duplicate("bacteria", ["virus"]) is None


def test_measured_values_as_classes_are_refused_naming_regression(tiny_root):
    """Bone age in months with fractions given to a class task was refused as "class '80.4' looks like a slip
    of '80.3'" (new-user check): numbers are no slips; many distinct fractional ones name task: regression."""
    _relabel(tiny_root, {i: f"{60 + 0.7 * i:.1f}" for i in range(30)})
    with pytest.raises(UserError, match=r"look like measured values, not classes: 30 distinct numbers such as "
                                        r"'60.7'; set task: regression") as e:
        load_competition(tiny_config(tiny_root))
    assert "slip" not in str(e.value)
    _relabel(tiny_root, {i: str(100 + i % 12) for i in range(30)})  # integer class codes: classes, no slips
    assert load_competition(tiny_config(tiny_root)).num_classes == 12


def test_class_folder_spelt_two_ways_names_the_folder(tmp_path):
    root = tmp_path / "xray"
    for name, n in (("NORMAL", 4), ("PNEUMONIA", 4), ("Normal", 1)):
        (root / "train" / name).mkdir(parents=True)
        for k in range(n):
            cv2.imwrite(str(root / "train" / name / f"{name}_{k}.png"), np.full((8, 8), 40 * k, np.uint8))
    with pytest.raises(UserError) as e:
        load_competition(tiny_config(root, "data.layout=folders", "data.sample_submission=''"))
    assert "class 'Normal' (1 image(s): folder " in str(e.value) and "did you mean 'NORMAL'?" in str(e.value)
    assert str(root / "train" / "Normal") in str(e.value)


def test_semicolon_csv_is_read_and_a_semicolon_sample_refused(tiny_root):
    df = pd.read_csv(tiny_root / "train.csv", dtype=str)
    df.to_csv(tiny_root / "train.csv", index=False, sep=";")
    comp = load_competition(tiny_config(tiny_root))
    assert len(comp.train) == 30 and comp.classes == ["0", "1", "2"]
    pd.read_csv(tiny_root / "sample_submission.csv", dtype=str).to_csv(tiny_root / "sample_submission.csv",
                                                                        index=False, sep=";")
    cfg = tiny_config(tiny_root, "data.test_csv=solution.csv")
    assert len(load_competition(cfg).test) == 9  # predict-time reading is not asked for here
    with pytest.raises(UserError, match="looks ';'-separated"):
        load_competition(cfg, strict=False, check_sample=True)


@pytest.mark.parametrize("case, needle", [
    ("no id column", "missing column 'id'"),
    ("ids without images", "2 of 9 id(s) have no test image"),
    ("missing file", "sample submission not found"),
])
def test_sample_submission_is_checked_at_prepare(tiny_root, case, needle):
    sample = tiny_root / "sample_submission.csv"
    df = pd.read_csv(sample, dtype=str)
    if case == "no id column":
        df.rename(columns={"id": "image"}).to_csv(sample, index=False)
    elif case == "ids without images":
        for f in sorted((tiny_root / "test").iterdir())[:2]:
            f.unlink()
        pd.read_csv(sample, dtype=str).drop(index=[0, 1]).to_csv(tiny_root / "test.csv", index=False)
    else:
        sample.unlink()
    test_csv = "test.csv" if case == "ids without images" else "solution.csv"
    cfg = tiny_config(tiny_root, f"data.test_csv={test_csv}")
    if case != "ids without images":
        load_competition(cfg)  # without the check: loads (the test ids come from test_csv)
    with pytest.raises(UserError) as e:
        load_competition(cfg, strict=False, check_sample=True)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match=re.escape(needle)):  # prepare fails on it before caching or splitting anything
        prepare(cfg)
    assert not cache_folder(cfg).exists() and not (tiny_root.parent / "runs" / "folds.csv").exists()


def test_limit_takes_n_per_class_and_never_mixes_with_full_runs(tiny_root, tmp_path):
    limited = tiny_config(tiny_root, "data.limit=3")
    a, b = load_competition(limited), load_competition(limited)
    assert a.train["label"].value_counts().to_dict() == {0: 3, 1: 3, 2: 3} and len(a.test) == 9
    assert a.train["id"].tolist() == b.train["id"].tolist()  # the same rows every run
    assert len(load_competition(tiny_config(tiny_root, "data.limit=2")).test) == 6
    full = tiny_config(tiny_root)
    before = tuple(k for k in HASHED_KEYS if k != "data.limit")  # the keys before data.limit existed
    assert config_hash(full) == config_hash(full, before) != config_hash(limited)
    out = tmp_path / "runs"
    load_or_make_folds(limited, a.train, Experiment(limited, out).split)
    assert json.loads((out / "folds.json").read_text())["limit"] == 3
    with pytest.raises(UserError, match="data.limit=3"):
        load_or_make_folds(full, load_competition(full).train, Experiment(full, out).split)
    with pytest.raises(UserError, match="data.limit"):
        tiny_config(tiny_root, "data.limit=1")  # fewer than folds.n_folds=2
