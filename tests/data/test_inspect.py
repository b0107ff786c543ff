"""comp.data.inspect through scripts/init.py, the config starter: a download looked at, a commented config
written with a reason for every guess, which loads and prepares as it is; never overwritten unasked."""

from __future__ import annotations

from pathlib import Path

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


def _init_and_load(root, tmp_path):
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    assert code == 0, err
    cfg = load_config(out, [*FAST, "batch_size=4", f"out_dir={tmp_path / 'runs'}",
                            f"images.cache_dir={tmp_path / 'cache'}"])
    return cfg, out.read_text()


def test_hms_spectrograms_are_recognised_and_the_figures_never_read(tmp_path):
    """On HMS 2024's download (train.csv naming train_spectrograms/<spectrogram_id>.parquet, raw EEG in
    train_eegs/, PNG plots in example_figures/) init.py found no image named by a CSV: it wrote no config, and
    a PNG folder was all it could take. The spectrogram layout is recognised as configs/hms2024.yaml writes it
    (file and offset columns, the six vote columns as soft targets, KL divergence, one sample per eeg_id with
    its rows aggregated, patient groups), the EEGs and the figures named in notes; it loads and prepares."""
    from replicas import hms2024

    root = hms2024(tmp_path / "data", eegs=True, figures=True)
    cfg, text = _init_and_load(root, tmp_path)
    shipped = OmegaConf.load(Path(__file__).parents[2] / "configs" / "hms2024.yaml")
    for key in ("id_column", "file_column", "offset_column", "label_columns", "label_rows", "group_column",
                "train_images", "test_images", "image_ext", "test_csv", "sample_submission"):
        assert cfg.data[key] == shipped.data[key], key
    assert (cfg.task, cfg.metric, cfg.predict.output, cfg.model.in_chans) == ("multiclass", "kl_divergence", "prob", 1)
    assert "example_figures/" in text and "data.file_column=eeg_id" in text
    prepare(cfg)
    folds = pd.read_csv(tmp_path / "runs" / "folds.csv", dtype=str)
    assert sorted(folds["id"]) == sorted(pd.read_csv(root / "train.csv", dtype=str)["eeg_id"].unique())


def test_isic2020_reads_the_jpegs_never_the_dicom_copies(tmp_path):
    """ISIC 2020's download holds every image as jpeg/train/<id>.jpg and as train/<id>.dcm: init.py read
    both folders (each id twice, the DICOMs under image_ext .jpg) and both test folders. One source, the
    JPEGs (configs/isic2020.yaml's), with a NOTE saying why and how to read the DICOMs; it loads and prepares."""
    from replicas import isic2020

    root = isic2020(tmp_path / "data", dicoms=True)
    cfg, text = _init_and_load(root, tmp_path)
    assert (list(cfg.data.train_images), list(cfg.data.test_images), cfg.data.image_ext) == (
        ["jpeg/train"], ["jpeg/test"], ".jpg")
    assert "# NOTE: train/ (.dcm) holds 28 of the same training image names as jpeg/train/ (.jpg)" in text
    prepare(cfg)
    folds = pd.read_csv(tmp_path / "runs" / "folds.csv", dtype=str)
    assert sorted(folds["id"]) == sorted(pd.read_csv(root / "train.csv", dtype=str)["image_name"])


def test_copies_of_a_folder_in_another_case_are_read_once(tmp_path):
    """HAM10000's archive holds HAM10000_images_part_1/ and a lower-case copy ham10000_images_part_1/: init.py
    listed all four folders (every image twice); the copies are left out, as configs/ham10000.yaml does."""
    from replicas import ham10000

    cfg, text = _init_and_load(ham10000(tmp_path / "data"), tmp_path)
    assert list(cfg.data.train_images) == ["HAM10000_images_part_1", "HAM10000_images_part_2"]
    assert text.count("a copy of the same images, not read") == 2


def test_osic_visits_get_a_visits_config_not_classes_nor_a_refusal(tmp_path):
    """OSIC's train.csv has several rows (visits) per Patient and train/<Patient>/<n>.dcm CT slices: init.py
    wrote a config taking test.csv's Weeks as image ids and FVC as classes, then refused it as a bag. The sample's
    <Patient>_<Weeks> ids with FVC and Confidence make it data.layout=visits (comp.data.visits), a Laplace head
    and OSIC's metric; its CT folders are not read (bags: issue 27)."""
    from replicas import osic

    cfg, text = _init_and_load(osic(tmp_path / "data"), tmp_path)
    d = cfg.data
    assert (d.layout, d.group_column, d.time_column, d.label_column, d.id_column) == (
        "visits", "Patient", "Weeks", "FVC", "Patient_Week")
    assert (list(d.baseline_columns), list(d.tabular_columns)) == (["FVC", "Percent"], ["Age", "Sex", "SmokingStatus"])
    assert (d.train_csv, d.test_csv) == ("train.csv", "test.csv")
    assert (cfg.task, cfg.train.loss, cfg.metric) == ("regression", "laplace", "laplace_log_likelihood")
    assert cfg.predict.output == "auto" and "scripts/tabular.py" in text


def test_patient_folders_of_slices_without_visit_rows_are_refused(tmp_path):
    """The same download with a sample that is not <Patient>_<Weeks> is a bag of slices per Patient: refused in
    one line naming the CSV, the column and what the data is."""
    from replicas import osic

    root = osic(tmp_path / "data")
    sample = pd.read_csv(root / "sample_submission.csv")
    sample.assign(Patient_Week=sample["Patient_Week"].str.rpartition("_")[0] + "_w").to_csv(
        root / "sample_submission.csv", index=False)
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    one_error(code, err, "train.csv", "'Patient' names folders of images", "several rows per Patient", "FVC",
              "data.layout=visits", "found no layout for it")
    assert not out.exists()


def test_a_class_map_csv_beside_class_folders_is_no_bag(tmp_path):
    """The bag refusal above needs slice-like file names repeated across the id folders (or repeated ids no
    other column resolves): a classes.csv naming the class folders, in a tree unzipped twice, stays the
    class-folder layout."""
    from comp.data.inspect import inspect_download

    root = build("chest_xray", tmp_path / "data")
    (root / "classes.csv").write_text("class,index\nNORMAL,0\nPNEUMONIA,1\n")
    guess = inspect_download(root)
    assert (guess.values["data.layout"], guess.values["data.classes"]) == ("folders", ["NORMAL", "PNEUMONIA"])
