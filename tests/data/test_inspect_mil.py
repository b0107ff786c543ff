"""scripts/init.py on the downloads where a row is many images (issue 27 item 7; replicas in
tests/replicas_mil.py): it read the brain tumour's four MR sequence folders as classes and the mammography
patient folders as classes, refused RSNA 2022-2024 as 'bags', and listed UBC-OCEAN's test_thumbnails/ as test
images. Now each layout gets its `mil:` keys, its id and label columns, task and metric, and the written
config loads."""

from __future__ import annotations

import pytest
from helpers import run_main
from omegaconf import OmegaConf
from replicas_mil import LUMBAR_COLUMNS, MIL_BUILDERS, MIL_CONFIGS

from comp.experiment import load_config

EXPECT = {
    "brain_tumor": {"data.train_csv": "train_labels.csv", "data.id_column": "BraTS21ID", "data.label_column":
                    "MGMT_value", "data.train_images": ["train"], "data.test_images": ["test"], "task": "binary",
                    "metric": "auc", "mil.source": "study", "mil.folder": "{BraTS21ID:05d}",
                    "mil.series": ["FLAIR", "T1w", "T1wCE", "T2w"], "data.classes": []},
    "cervical_spine": {"data.train_csv": "train.csv", "data.id_column": "StudyInstanceUID",
                       "data.label_columns": ["patient_overall", *(f"C{v}" for v in range(1, 8))],
                       "data.train_images": ["train_images"], "data.test_images": ["test_images"],
                       "data.test_csv": "test.csv", "task": "multilabel", "metric": "rsna2022_cervical",
                       "predict.shape": "long", "mil.source": "series", "mil.folder": "{id}"},
    "abdominal_trauma": {"data.id_column": "patient_id", "data.label_columns": [], "task": "multihead",
                         "data.heads": {t: ["healthy", "injury"] if t in ("bowel", "extravasation") else
                                        ["healthy", "low", "high"] for t in ("bowel", "extravasation", "kidney",
                                                                              "liver", "spleen")},
                         "metric": "rsna2023_trauma", "mil.source": "study", "mil.series": [], "data.test_csv": ""},
    "lumbar_spine": {"data.train_csv": "train.csv", "data.id_column": "study_id",
                     "data.heads": {c: ["normal_mild", "moderate", "severe"] for c in LUMBAR_COLUMNS},
                     "task": "multihead", "metric": "rsna2024_lumbar", "predict.shape": "long", "mil.source": "study",
                     "mil.series": ["Sagittal T1", "Sagittal T2/STIR", "Axial T2"]},
    "mammography": {"data.id_column": "image_id", "data.label_column": "cancer", "data.group_column": "patient_id",
                    "data.train_images": ["train_images/*"], "data.test_images": ["test_images/*"],
                    "data.test_csv": "test.csv", "data.submission_id_column": "prediction_id", "task": "binary",
                    "metric": "pf1", "mil.source": "views", "mil.join": ["patient_id", "laterality"]},
    "ubc_ocean": {"data.id_column": "image_id", "data.label_column": "label", "data.train_images": ["train_images"],
                  "data.test_images": ["test_images"], "metric": "balanced_accuracy", "mil.source": "tiles",
                  "mil.pool": "attention"},
}
NOTES = {"abdominal_trauma": ["5 targets, one-hot each", "task: multihead",
                              "test_series_meta.csv repeats 'patient_id'", "configs/rsna2023_abdominal_trauma.yaml"],
         "lumbar_spine": ["25 label columns", "task: multihead", "configs/rsna2024_lumbar_spine.yaml"],
         "cervical_spine": ["configs/rsna2022_cervical_spine.yaml"],
         "ubc_ocean": ["test_thumbnails/: thumbnails of the images, not read"]}


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("name", list(MIL_BUILDERS))
def test_init_writes_the_mil_keys_of_each_layout(tmp_path, name):
    root = MIL_BUILDERS[name](tmp_path / "data")
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    assert code == 0, err
    cfg = load_config(out)
    for key, want in EXPECT[name].items():
        assert _plain(OmegaConf.select(cfg, key)) == want, key
    written = OmegaConf.load(out)
    for key, want in MIL_CONFIGS[name].items():  # what init writes agrees with the replica's own config
        got = OmegaConf.select(written, key)
        assert got is None or _plain(got) == want, key
    text = out.read_text()
    for needle in NOTES.get(name, []):
        assert needle in text, needle
    assert "mil:" in text and "\n  # " in text  # the section, each key under its reason


def test_series_folders_without_their_csv_are_not_classes(tmp_path):
    """Without train_labels.csv, init.py wrote the brain tumour's FLAIR, T1w, T1wCE, T2w as classes and every
    patient folder as a split; folders whose sub-folders repeat slice names are refused, naming them."""
    from helpers import one_error

    root = MIL_BUILDERS["brain_tumor"](tmp_path / "data")
    (root / "train_labels.csv").unlink()
    out = tmp_path / "config.yaml"
    code, _, err = run_main("init.py", str(root), "-o", str(out))
    one_error(code, err, "00000/", "['FLAIR', 'T1w', 'T1wCE', 'T2w']", "not class folders", "mil.source: study")
    assert not out.exists()
