"""comp.data.inspect through scripts/init.py, the config starter: a download looked at, a commented config
written with a reason for every guess, which loads and prepares as it is; never overwritten unasked."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import FAST, one_error, run_main
from omegaconf import OmegaConf
from replicas import build

from comp.experiment import load_config
from comp.pipeline import prepare


@pytest.mark.parametrize("name,expect", [
    ("aptos2019", {"layout": "csv", "id_column": "id_code", "label_column": "diagnosis",
                   "train_images": ["train_images"], "test_csv": "test.csv"}),
    ("chest_xray", {"layout": "folders", "classes": ["NORMAL", "PNEUMONIA"], "test_images": ["**/test"]}),
    ("isic2024", {"layout": "csv", "id_column": "isic_id", "train_images": ["train-image.hdf5"], "image_ext": "",
                  "test_images": ["test-image.hdf5"], "group_column": "patient_id", "test_csv": "test-metadata.csv"}),
])
def test_init_writes_a_config_that_loads_and_prepares(tmp_path, name, expect):
    root = build(name, tmp_path / "data")
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    assert code == 0, err
    assert "data.layout" in err and out.read_text().count("\n# ") + out.read_text().count("\n  # ") >= 5
    cfg = load_config(out, [*FAST, "batch_size=4", f"out_dir={tmp_path / 'runs'}",
                            f"images.cache_dir={tmp_path / 'cache'}"])
    for key, value in expect.items():
        got = cfg.data[key]
        assert (list(got) if OmegaConf.is_list(got) else got) == value, key
    prepare(cfg)
    folds = pd.read_csv(tmp_path / "runs" / "folds.csv")
    assert len(folds) >= 20 and folds["fold"].nunique() == 2
    code, _, err = run_main("init.py", str(root), "-o", str(out))  # never overwritten without --force
    one_error(code, err, "already exists")


def test_measured_values_are_guessed_as_regression():
    """init.py wrote metric: accuracy and no task for 40 fractional values, and only a note for a patient_id
    column (new-user check): the task and the metric are guessed, each with its reason."""
    from comp.data.inspect import Guess, _metric

    guess = Guess()
    _metric([f"{50 + 0.5 * i:.1f}" for i in range(40)], guess)
    assert (guess.values["task"], guess.values["metric"]) == ("regression", "mae")
    guess = Guess()
    _metric([str(6 + 7 * i) for i in range(30)], guess)  # months as integers: a note, the classes kept
    assert "task" not in guess.values and "set task: regression" in guess.notes[0]
    guess = Guess()
    _metric(["0", "1", "2", "3", "4"] * 3, guess)
    assert guess.values["metric"] == "qwk" and not guess.notes


def test_a_patient_column_is_guessed_as_the_folds_group(tiny_root, tmp_path):
    df = pd.read_csv(tiny_root / "train.csv", dtype=str)
    df.insert(1, "patient_id", [f"P{i // 3}" for i in range(len(df))])
    df.to_csv(tiny_root / "train.csv", index=False)
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(tiny_root), "-o", str(out))
    assert code == 0, err
    assert load_config(out).data.group_column == "patient_id"


@pytest.mark.parametrize("agree", [True, False])
def test_repeated_ids_are_guessed_as_one_image(tiny_root, tmp_path, agree):
    """An id on several rows of the labels CSV: init.py's config refused it at load ('appears more than once');
    rows that agree get data.dedupe_ids, rows that differ data.label_rows=aggregate, and the config loads."""
    from comp.data.competition import load_competition

    df = pd.read_csv(tiny_root / "train.csv", dtype=str)
    again = df.iloc[:3].copy()
    if not agree:
        again["label"] = (again["label"].astype(int) + 1).astype(str)
    pd.concat([df, again]).to_csv(tiny_root / "train.csv", index=False)
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(tiny_root), "-o", str(out))
    assert code == 0, err
    cfg = load_config(out)
    assert (cfg.data.dedupe_ids, cfg.data.label_rows) == ((True, "refuse") if agree else (False, "aggregate"))
    comp = load_competition(cfg)
    assert comp.train["id"].is_unique and len(comp.train) == len(df)
    assert comp.several_rows["disagreeing"] == (0 if agree else 3)


def test_ids_that_are_dicom_uids_with_dots_are_found(tmp_path):
    """init.py took Path(id).stem of each id, cutting a DICOM UID at its last dot (1.2.826.0.1.3680043.8.498.448
    -> ...498), found no images and gave up; the ids are the file names without the extension: init.py guesses
    the csv layout and prepare finds every training and test image."""
    import cv2
    import numpy as np

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    uids = [f"1.2.826.0.1.3680043.8.498.{rng.integers(10**11, 10**12)}" for _ in range(30)]
    for k, uid in enumerate(uids):
        folder = root / ("test" if k >= 24 else "train")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{uid}.png"), np.full((16, 16), 40 + 60 * (k % 2), np.uint8))
    pd.DataFrame({"StudyInstanceUID": uids[:24], "target": [k % 2 for k in range(24)]}).to_csv(
        root / "train.csv", index=False)
    pd.DataFrame({"StudyInstanceUID": uids[24:], "target": 0}).to_csv(root / "sample_submission.csv", index=False)
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    assert code == 0, err
    cfg = load_config(out, [*FAST, "batch_size=4", f"out_dir={tmp_path / 'runs'}",
                            f"images.cache_dir={tmp_path / 'cache'}"])
    assert (cfg.data.layout, cfg.data.id_column, cfg.data.image_ext) == ("csv", "StudyInstanceUID", ".png")
    prepare(cfg)
    folds = pd.read_csv(tmp_path / "runs" / "folds.csv", dtype=str)
    assert sorted(folds["id"]) == sorted(uids[:24])
