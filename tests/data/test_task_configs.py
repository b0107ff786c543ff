"""The shipped configs of tasks beyond one label per image, each on a replica of its real download
(tests/replicas.py): SIIM-ISIC 2020 (binary, AUC), ISIC 2024 (binary, pAUC, images in HDF5 stores; its
image model then scripts/stack.py), RANZCR CLiP (11 labels, mean column AUC), RSNA Bone Age
(regression, MAE, a test CSV whose id column is "Case ID"), HAM10000 (7 classes, lesions as groups, no
test set) and HMS 2024 (six vote shares from spectrogram parquet windows, several rows per eeg_id, KL
divergence), run as a user would: prepare.py, one short fold with train_fold.py, predict.py, and the CSV on
stdout checked against the sample submission (or, where there is none, the test ids and one value column)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT, run_main
from replicas import HAM_CLASSES, TASK_BUILDERS, ham10000, overrides, siim_covid19

from comp.data.competition import load_competition
from comp.experiment import load_config

NAMES = list(TASK_BUILDERS)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("replicas")
    return {name: TASK_BUILDERS[name](base / name) for name in NAMES}


def script(capsys, name: str, *argv: str) -> str:
    """`python scripts/<name> ARGV` in this process (conftest.run_main); its stdout. Fails on a
    non-zero exit, showing stderr."""
    code, out, err = run_main(name, *argv)
    assert code == 0, f"{name} exited {code}:\n{err[-3000:]}"
    return out


def cfg_for(name: str, root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides(root, out, FAST), *extra])


def _ham_with_test(replicas, tmp_path: Path) -> Path:
    root = tmp_path / "ham10000"
    shutil.copytree(replicas["ham10000"], root)
    extra = ham10000(tmp_path / "with_test", isic_test=True) / "ISIC2018_Task3_Test_Input"
    shutil.copytree(extra, root / extra.name)
    return root


@pytest.mark.parametrize("name", NAMES)
def test_prepare_train_predict(replicas, tmp_path, capsys, name):
    """prepare.py → train_fold.py --fold 0 → predict.py on the replica, the CSV checked as Kaggle reads it."""
    root = _ham_with_test(replicas, tmp_path) if name == "ham10000" else replicas[name]
    out = tmp_path / "runs"
    config = str(ROOT / "configs" / f"{name}.yaml")
    ov = [*overrides(root, out, FAST), f"images.cache_dir={tmp_path / 'cache'}", "predict.folds=[0]",
          "train.accum_steps=1"]  # RANZCR accumulates 4 batches: more than a replica's fold holds
    script(capsys, "prepare.py", "--config", config, *ov)
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    script(capsys, "train_fold.py", "--config", config, "--fold", "0", *ov)
    assert (out / "fold0" / "best.pt").is_file() and (out / "fold0" / "oof.csv").is_file()
    rows = list(csv.reader(io.StringIO(script(capsys, "predict.py", "--config", config, *ov))))
    header, body = rows[0], rows[1:]
    cfg = load_config(config, ov)
    if cfg.data.sample_submission:
        sample = list(csv.reader(open(root / cfg.data.sample_submission, newline="")))
        assert header == sample[0]
        assert [r[0] for r in body] == [r[0] for r in sample[1:]]  # the sample's ids, in its order
    else:
        assert header == [cfg.data.id_column, cfg.data.label_column]
        assert sorted(r[0] for r in body) == sorted(load_competition(cfg).test["id"])
    values = [r[1:] for r in body]
    if name == "ham10000":
        assert {v for (v,) in values} <= set(HAM_CLASSES)
        return
    num = np.array(values, dtype=float)
    assert np.isfinite(num).all()
    if name == "rsna_bone_age":  # months, de-standardised: near the training ages, not z-scores
        ages = pd.read_csv(root / "boneage-training-dataset.csv")["boneage"]
        assert num.shape == (6, 1) and (num > ages.min() - 3 * ages.std()).all() and num.mean() > 10
    elif name == "hms2024":  # the six vote shares of each eeg_id: a distribution per row
        assert num.shape == (4, 6) and (num >= 0).all() and np.allclose(num.sum(1), 1, atol=1e-4)
    else:  # probabilities: P(target = 1) (ISIC), one per label (RANZCR)
        assert num.shape[1] == (11 if name == "ranzcr_clip" else 1) and ((num >= 0) & (num <= 1)).all()


def test_isic2024_image_model_then_stack(replicas, tmp_path, capsys):
    """configs/isic2024.yaml as its header runs it: prepare.py on the HDF5 stores, both folds of the image
    model, then scripts/stack.py over its OOF with the metadata and patient-relative features; the stack's
    submission has the sample's ids and column, probabilities in it."""
    root, out = replicas["isic2024"], tmp_path / "runs"
    config = str(ROOT / "configs" / "isic2024.yaml")
    ov = [*overrides(root, out, FAST), f"images.cache_dir={tmp_path / 'cache'}"]
    script(capsys, "prepare.py", "--config", config, *ov)
    for k in ("0", "1"):
        script(capsys, "train_fold.py", "--config", config, "--fold", k, *ov)
    said = script(capsys, "stack.py", "--config", config, "--out", str(tmp_path / "stack"), "--min-samples-leaf", "2",
                  "--max-iter", "20", *ov)
    assert "CV pauc" in said
    sub = pd.read_csv(tmp_path / "stack" / "submission.csv")
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub["isic_id"]) == list(sample["isic_id"])
    assert sub["target"].between(0, 1).all()


def test_siim_covid19_studies_and_images(tmp_path, capsys):
    """configs/siim_covid19.yaml on a replica of the SIIM-COVID19 download (nested study/series/image
    DICOMs, the study and image CSVs): prepare.py (folds keep a study whole), one fold, predict.py; the CSV has
    the sample's header and rows in its order, each study row the four class terms of its images' mean output
    and each image row "none P 0 0 1 1" with P its P(negative)."""
    root, out = siim_covid19(tmp_path / "siim"), tmp_path / "runs"
    config = str(ROOT / "configs" / "siim_covid19.yaml")
    ov = [*overrides(root, out, FAST), f"images.cache_dir={tmp_path / 'cache'}", "predict.folds=[0]",
          "folds.n_folds=2"]
    script(capsys, "prepare.py", "--config", config, *ov)
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    assert (folds.groupby("group")["fold"].nunique() == 1).all() and folds["group"].nunique() == 8
    script(capsys, "train_fold.py", "--config", config, "--fold", "0", *ov)
    probs = tmp_path / "probs.csv"
    rows = list(csv.reader(io.StringIO(script(capsys, "predict.py", "--config", config, "--save-probs", str(probs),
                                              *ov))))
    sample = list(csv.reader(open(root / "sample_submission.csv", newline="")))
    assert rows[0] == sample[0] == ["id", "PredictionString"]
    assert [r[0] for r in rows[1:]] == [r[0] for r in sample[1:]]
    saved = pd.read_csv(probs).set_index("id")
    for (rid, value), (_, like) in zip(rows[1:], sample[1:], strict=True):
        words, want = value.split(), like.split()
        assert words[::6] == want[::6] and len(words) == len(want)  # the class words, one term each
        assert all(words[k + 2:k + 6] == ["0", "0", "1", "1"] for k in range(0, len(words), 6))
        p = np.array(words[1::6], dtype=float)
        assert ((p >= 0) & (p <= 1)).all()
        mine = saved.loc[rid].to_numpy()
        assert np.allclose(p, mine if rid.endswith("_study") else mine[:1], atol=1e-5)
        if rid.endswith("_study"):
            assert np.isclose(p.sum(), 1, atol=1e-4)
