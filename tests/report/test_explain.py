"""Seeing what the model learned (comp.report.explain, scripts/explain.py): Grad-CAM equal to
pytorch-grad-cam's, the review sheets and tables of trained folds (the page checked in a real headless
browser), its user errors, and data.exclude, which leaves out the training images the review finds wrong."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, one_error, run_main, write_tiny_competition

from comp.config import HASHED_KEYS, config_hash
from comp.data.competition import load_competition
from comp.data.folds import load_or_make_folds
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.models import create_model
from comp.report.explain import grad_cam

# --- Grad-CAM ------------------------------------------------------------------------------------------

def test_grad_cam_is_layer4_for_the_kit_resnet_and_works_on_a_vit():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("resnet18", 3).eval()
    x = torch.randn(2, 3, 96, 96)
    ours = grad_cam(model, x, [0, 2])
    ref = GradCAM(model=model, target_layers=[model.layer4])
    want = ref(input_tensor=x, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    ref.activations_and_grads.release()
    assert ours.shape == (2, 96, 96) and np.allclose(ours, want, atol=1e-5) and ours.max() > 0
    vit = create_model("timm/vit_tiny_patch16_224", 3).eval()  # tokens (B, 1 + 14*14, C) -> (B, C, 14, 14)
    cam = grad_cam(vit, torch.randn(1, 3, 224, 224), [1])
    assert cam.shape == (1, 224, 224) and np.isfinite(cam).all() and cam.max() > 0


def test_grad_cam_of_a_one_logit_binary_model_follows_the_predicted_side():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("resnet18", 1).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = grad_cam(model, x, [0, 0], [1, -1])
    ref = GradCAM(model=model, target_layers=[model.layer4])
    want = ref(input_tensor=x, targets=[BinaryClassifierOutputTarget(1), BinaryClassifierOutputTarget(0)])
    ref.activations_and_grads.release()
    assert np.allclose(ours, want, atol=1e-5) and not np.allclose(ours[1], grad_cam(model, x[1:], [0])[0])


# --- the whole thing on the demo's layout --------------------------------------------------------------

@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """Two folds of the tiny competition trained in-process, a train image copied into test (a
    duplicate), then scripts/explain.py run on them."""
    from comp.train.loop import fit

    tmp = tmp_path_factory.mktemp("explain")
    root = write_tiny_competition(tmp / "data")
    shutil.copy(root / "train" / "img_1_003.png", root / "test" / "test_004.png")
    overrides = [*FAST, "image_size=64", f"data.root={root}", f"out_dir={tmp / 'runs'}", "data.source=competition"]
    for k in (0, 1):
        fit(load_config(None, overrides), k)
    code, out, err = run_main("explain.py", "--per-class", "2", "-o", str(tmp / "review"), *overrides)
    assert code == 0, err[-3000:]
    return {"dir": tmp / "review", "stdout": out, "overrides": overrides, "root": root}


def test_explain_writes_sheets_and_tables(explained):
    d = explained["dir"]
    for k in (0, 1):
        for s in ("errors", "unsure", "random"):
            img = cv2.imread(str(d / f"fold{k}_{s}.png"))
            assert img is not None and img.shape[0] > 100, (k, s)
    top = pd.read_csv(d / "top_losses.csv")
    assert len(top) == 30 and set(top["fold"]) == {0, 1} and top["loss"].is_monotonic_decreasing
    dups = pd.read_csv(d / "duplicates.csv", dtype=str, keep_default_na=False)
    row = dups[(dups["id_a"] == "img_1_003") & (dups["id_b"] == "test_004")]
    assert len(row) == 1 and row.iloc[0]["kind"] == "identical" and row.iloc[0]["set_b"] == "test"
    page = (d / "review.html").read_text()
    assert "Top losses" in page and "Label issue candidates" in page and "img_1_003" in page
    # 2 folds x 3 classes x 3 sections x 2 per class = 36 cards (fewer when a section runs short), 2 images each
    assert 2 * 2 * 3 <= page.count("<figure>") - len(dups.head(24)) <= 36
    assert str(d / "review.html") in explained["stdout"]


PROBE = ('<script>window.addEventListener("load",function(){var im=Array.from(document.images);'
         'var bad=im.filter(function(i){return !(i.complete&&i.naturalWidth>0)});var d=document.createElement("div");'
         'd.id="img-probe";d.setAttribute("data-total",im.length);d.setAttribute("data-broken",bad.length);'
         'document.body.appendChild(d)});</script>')


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _images_in_browser(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images, broken images) of `page` as headless Chromium renders it: a copy of the page with a probe
    script that, on load, writes into the DOM how many <img> have naturalWidth 0; read with --dump-dom."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'id="img-probe" data-total="(\d+)" data-broken="(\d+)"', res.stdout)
    assert m, (res.returncode, res.stderr[-2000:])
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(_browser() is None, reason="no chromium on PATH (apt-get install chromium): browser check skipped")
def test_review_page_renders_every_image_in_a_browser(explained, tmp_path):
    total, broken = _images_in_browser(explained["dir"] / "review.html", tmp_path)
    assert total >= 2 * 12 + 2 and broken == 0  # the cards and the duplicate pair
    bad = tmp_path / "bad.html"  # the probe can fail: a truncated data URI and a missing file are caught
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA"><img src="nope.png"></body></html>')
    assert _images_in_browser(bad, tmp_path) == (2, 2)


# --- data.exclude --------------------------------------------------------------------------------------

def test_data_exclude_drops_training_ids_and_the_old_folds_are_refused(tiny, tmp_path, capsys):
    base = load_config(None, tiny["overrides"])
    full = load_competition(base)
    ids = ["img_0_000", "img_2_004"]
    cfg = load_config(None, [*tiny["overrides"], f"data.exclude=[{','.join(ids)}]"])
    comp = load_competition(cfg)
    assert len(comp.train) == len(full.train) - 2 and not comp.train["id"].isin(ids).any()
    assert comp.test.equals(full.test)  # test images are never dropped
    assert "data.exclude: 2 of 30 training images left out (img_0_000, img_2_004)" in capsys.readouterr().err
    csv = tmp_path / "issues.csv"
    pd.DataFrame({"id": ids, "label": ["0", "2"]}).to_csv(csv, index=False)
    from_csv = load_competition(load_config(None, [*tiny["overrides"], f"data.exclude={csv}"]))
    assert from_csv.train["id"].tolist() == comp.train["id"].tolist()
    assert config_hash(cfg) != config_hash(base)
    (tiny["root"] / "train" / "img_0_000.png").unlink()  # a missing (or broken) image can be excluded too
    assert len(load_competition(cfg).train) == 28
    for bad, needle in (("[nope]", "'nope' is not a training image id"), ("[test_001]", "test images are never")):
        with pytest.raises(UserError, match=re.escape(needle)):
            load_competition(load_config(None, [*tiny["overrides"], f"data.exclude={bad}"]))
    out = tiny["out"]
    load_or_make_folds(base, full.train, Experiment(base, out).split)
    with pytest.raises(UserError, match=r"folds.csv was made with data.exclude=\[\], the config now says"):
        load_or_make_folds(cfg, comp.train, Experiment(cfg, out).split)
    (out / "folds.json").unlink()  # a hand-made split without the excluded images is still refused
    with pytest.raises(UserError, match="different set of images"):
        load_or_make_folds(cfg, comp.train, Experiment(cfg, out).split)


def test_data_exclude_unset_keeps_old_hashes_and_folds(tiny):
    cfg = load_config(None, tiny["overrides"])  # checkpoints trained before the key keep their hash
    assert config_hash(cfg) == config_hash(cfg, tuple(k for k in HASHED_KEYS if k != "data.exclude"))
    comp = load_competition(cfg)
    folds = load_or_make_folds(cfg, comp.train, Experiment(cfg, tiny["out"]).split)
    assert "exclude" not in json.loads((tiny["out"] / "folds.json").read_text())  # as before the key existed
    again = load_or_make_folds(cfg, comp.train, Experiment(cfg, tiny["out"]).split)
    assert again["fold"].tolist() == folds["fold"].tolist()


def test_explain_user_errors(tiny):
    code, _, err = run_main("explain.py", *tiny["overrides"])
    one_error(code, err, "has an oof.csv yet")
    code, _, err = run_main("explain.py", "--per-class", "0", *tiny["overrides"])
    one_error(code, err, "--per-class 0")


# --- MIL rows (mil.source set: a row is many images) -------------------------------------------------------

@pytest.fixture(scope="module")
def mil_fold(tmp_path_factory):
    from mil_fold import trained_mil_fold

    return trained_mil_fold(tmp_path_factory)


def test_explain_and_report_of_a_trained_mil_fold(mil_fold, tmp_path):
    """Every figure path of explain.py and report.py on MIL rows (a study of 4 series x 3 instances): the
    sheets show each row's heaviest instances with their weights, the duplicate search is skipped in one
    line, and the page says so."""
    out = tmp_path / "explain"
    code, stdout, err = run_main("explain.py", "--config", mil_fold["config"], "--per-class", "2", "-o", str(out),
                                 *mil_fold["overrides"])
    assert code == 0, err[-3000:]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "fold0_random.png" in pngs and set(pngs) <= {"fold0_errors.png", "fold0_random.png", "fold0_unsure.png"}
    for p in out.glob("*.png"):
        img = cv2.imread(str(p))
        assert img is not None and img.shape[1] > 600  # strips of 4 instances, not one thumbnail a row
    page = (out / "review.html").read_text()
    assert "<figure class=mil>" in page and re.search(r"#\d+ \(w 0\.\d{3}\)", page) and " of 12" in page
    assert "not searched: mil.source=study" in page
    assert err.count("duplicates not searched") == 1
    assert not (out / "duplicates.csv").exists()
    code, _, err = run_main("report.py", "--config", mil_fold["config"], *mil_fold["overrides"])
    assert code == 0, err[-3000:]
    assert "OOF roc:" in err and "OOF confusion:" in err
