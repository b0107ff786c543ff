"""What a new user trips on (issue 21): a partial ensemble made silently, a config typo found only at predict,
an opaque hash refusal, progress-bar frames in a log file, empty one-epoch figures, a best.pt as heavy as a
resume checkpoint, no notebook API, no config for a new download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, ROOT, make_experiment, one_error, run_main
from omegaconf import OmegaConf
from replicas import build

import comp
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment import checkpoint as ckpt_io
from comp.experiment.checkpoint import save as save_atomic
from comp.log import progress, set_quiet
from comp.pipeline import prepare
from comp.predict.predict import predict_test
from comp.report.plots import confusion_figure
from comp.report.report import compare

C2 = (0x2C, 0xA0, 0x2C)  # matplotlib's "C2" (the metric's line in curves.png), RGB


def _pixels(png: Path, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels of `png` are within `tol` (per channel) of colour `rgb`."""
    img = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


# --- 5: no silent partial ensemble; 8: the changed key named --------------------------------------------


def test_a_partial_ensemble_is_refused_unless_named_and_every_prediction_says_what_it_ensembles(tmp_path, capsys):
    ex = make_experiment(tmp_path, n_folds=3)
    (ex["out"] / "fold1" / "best.pt").unlink()
    (ex["out"] / "fold2" / "best.pt").unlink()
    with pytest.raises(UserError, match=r"1 of 3 folds trained .*folds \[0\].*predict.folds=\[0\]"):
        Experiment(ex["cfg"]).trained()
    with pytest.raises(UserError, match=r"fold\(s\) \[2\] of predict.folds have no best.pt"):
        Experiment(load_config(None, [*ex["overrides"], "predict.folds=[0,2]"])).trained()
    with pytest.raises(UserError, match="predict.folds"):
        load_config(None, [*ex["overrides"], "predict.folds=[3]"])  # folds.n_folds=3: 0..2
    capsys.readouterr()
    probs = predict_test(load_config(None, [*ex["overrides"], "predict.folds=[0]"]), ex["comp"])
    assert probs.shape == (len(ex["comp"].test), 3)
    assert "ensemble: 1 of 3 folds (fold0) x 2 TTA view(s)" in capsys.readouterr().err


def test_a_fold_of_other_settings_names_the_key_old_and_new_like_resume(tmp_path):
    ex = make_experiment(tmp_path)
    for k in (0, 1):  # as training saves them: the resolved config rides in the checkpoint
        path = ex["out"] / f"fold{k}" / "best.pt"
        ck = torch.load(path, weights_only=True)
        save_atomic({**ck, "config": OmegaConf.to_container(ex["cfg"], resolve=True)}, path)
    other = load_config(None, [*ex["overrides"], "image_size=24", "seed=7"])
    with pytest.raises(UserError, match=r"fold0/best.pt was trained with a different .*\(image_size 16 -> 24\)"):
        predict_test(other, ex["comp"])
    ck = ckpt_io.load(ex["out"] / "fold0" / "best.pt")
    with pytest.raises(UserError, match=r"--resume: .*\(image_size 16 -> 24\)"):  # the same words, one function
        ckpt_io.check_resume({**ck, "step": 0}, Path("last.pt"), other, 1)
    assert ckpt_io.meaning_changes(ck, ex["cfg"]) is None  # seed is not what the weights mean


# --- 7: the whole config checked when it loads -----------------------------------------------------------


@pytest.mark.parametrize("override,needles", [
    ("aug.tta=[idnetity]", ["aug.tta", "'idnetity'"]),
    ("aug.valid=[{name: HorizontalFlip, prob: 0.5}]", ["aug.valid[0]", "HorizontalFlip"]),
    ("images.preprocess=[clahe, ben_graam]", ["images.preprocess[1]", "'ben_graam'"]),
    ("metric=kappa", ["'metric'", "'kappa'"]),
    ("model.name=timm/resnet_18", ["'model.name'", "'resnet_18'"]),
])
def test_a_typo_anywhere_fails_train_fold_before_training(tiny, override, needles):
    code, out, err = run_main("train_fold.py", "--fold", "0", *tiny["overrides"], override)
    one_error(code, err, *needles)
    assert not tiny["out"].exists()  # nothing trained, nothing written


# --- 11, 12, 13: a real one-epoch fold with stderr to a file ---------------------------------------------


def test_one_epoch_fold_log_file_figures_and_slim_best(tiny, tmp_path):
    log = tmp_path / "fold0.log"
    with log.open("w") as f:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "train_fold.py"), "--fold", "0", *tiny["overrides"],
                        "model.name=timm/test_resnet"],
                       stderr=f, stdout=subprocess.DEVNULL, check=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = log.read_text()
    assert "\r" not in text  # no progress-bar frames in a file...
    assert "fold 0 epoch 0: train_loss" in text  # ...the epoch's line instead

    fold = tiny["out"] / "fold0"
    best, last = fold / "best.pt", fold / "last.pt"
    assert "optimizer" not in torch.load(best, weights_only=True)
    assert "optimizer" in torch.load(last, weights_only=True)  # the resume checkpoint keeps everything
    assert best.stat().st_size < 0.6 * last.stat().st_size, (best.stat().st_size, last.stat().st_size)

    assert _pixels(fold / "curves.png", C2) > 20  # the one epoch's metric is a marker, not an invisible line
    table = compare([tiny["out"]], tmp_path / "compare.png")
    assert list(table["experiment"]) == [tiny["out"].name] and table["epochs"].tolist() == [1]
    assert _pixels(tmp_path / "compare.png", (0x1F, 0x77, 0xB4)) > 250  # C0: markers beyond the legend's


def test_a_two_class_confusion_matrix_has_room(tmp_path):
    path = tmp_path / "c.png"
    confusion_figure(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["NORMAL", "PNEUMONIA"], path)
    h, w = cv2.imread(str(path)).shape[:2]
    assert w >= 400 and h >= 350, (w, h)  # at least 4 x 3.5 inches at 100 dpi


def test_bars_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Tty())
    assert not progress(3, "x").disable
    set_quiet(True)
    try:
        assert progress(3, "x").disable
    finally:
        set_quiet(False)
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # a file: no bars
    assert progress(3, "x").disable


# --- 16: a config starter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,expect", [
    ("aptos2019", {"layout": "csv", "id_column": "id_code", "label_column": "diagnosis",
                   "train_images": ["train_images"], "test_csv": "test.csv"}),
    ("chest_xray", {"layout": "folders", "classes": ["NORMAL", "PNEUMONIA"], "test_images": ["**/test"]}),
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


# --- 15: the notebook ---------------------------------------------------------------------------------------


def test_the_demo_notebook_runs_top_to_bottom():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "demo.ipynb", as_version=4)
    assert comp.train_fold and comp.validate_config  # the API the notebook uses
    # "python3" is ipykernel's native kernel: this very interpreter (sys.executable), whatever is installed
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "held-out accuracy" in outputs and "fold" in outputs
