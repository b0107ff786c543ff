"""Seeing what the model learned: Grad-CAM review sheets (checked in a real headless browser), the
error-analysis tables, label-issue candidates, duplicate images and data.exclude."""

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
from conftest import FAST, write_tiny_competition
from skimage import data as skdata
from test_faults_config import one_error, run_main

from comp.config import HASHED_KEYS, config_hash, load_config
from comp.data.competition import load_competition
from comp.data.folds import load_or_make_folds
from comp.data.readers import load_image
from comp.errors import UserError
from comp.models import create_model
from comp.report import errors_analysis as ea
from comp.report.explain import grad_cam

CLASSES = ["a", "b", "c"]


def _oof(labels: list[int], probs: list[list[float]], **cols) -> pd.DataFrame:
    df = pd.DataFrame({"id": [f"i{k}" for k in range(len(labels))], "label": labels, **cols})
    for c, name in enumerate(CLASSES):
        df[f"prob_{name}"] = [p[c] for p in probs]
    return df


# --- tables --------------------------------------------------------------------------------------------

def test_top_losses_worst_first_and_confused_pairs():
    oof = _oof([0, 0, 1, 2, 2, 2], [[.9, .05, .05], [.2, .7, .1], [.1, .8, .1], [.6, .1, .3], [.05, .05, .9],
                                    [.1, .6, .3]], fold=[0, 0, 1, 1, 0, 1])
    top = ea.top_losses(oof, CLASSES)
    assert top["id"].tolist() == ["i1", "i3", "i5", "i2", "i0", "i4"]  # p_label .2 .3 .3 .8 .9 .9, ties stable
    assert top["loss"].is_monotonic_decreasing
    assert top.loc[0, "loss"] == pytest.approx(-np.log(0.2))
    assert (top.loc[0, "label"], top.loc[0, "pred"], top.loc[0, "p_pred"]) == ("a", "b", pytest.approx(.7))
    pairs = ea.confused_pairs(oof, CLASSES)
    assert pairs[["label", "pred", "count"]].values.tolist() == [["a", "b", 1], ["c", "a", 1], ["c", "b", 1]]
    assert pairs["share"].tolist() == pytest.approx([.5, 1 / 3, 1 / 3])


def test_group_metrics_per_patient():
    oof = _oof([0, 0, 1, 1], [[.9, .05, .05], [.3, .6, .1], [.1, .8, .1], [.2, .7, .1]], group=["p1", "p1", "p2", "p2"])
    g = ea.group_metrics(oof, CLASSES).set_index("group")
    assert g.index.tolist() == ["p1", "p2"]  # the patient with an error first
    assert (g.loc["p1", "n"], g.loc["p1", "errors"], g.loc["p1", "accuracy"]) == (2, 1, 0.5)
    assert g.loc["p2", "accuracy"] == 1.0
    assert g.loc["p1", "log_loss"] == pytest.approx(-(np.log(.9) + np.log(.3)) / 2)
    assert g.loc["p1", "labels"] == "a"


def test_label_issues_find_the_flipped_label():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    probs = rng.uniform(0.02, 0.2, (90, 3))
    probs[np.arange(90), labels] = rng.uniform(0.6, 0.95, 90)  # a fair model: right, with varying confidence
    probs[7] = [0.97, 0.01, 0.02]  # ...and very sure that image 7 is an a
    probs /= probs.sum(1, keepdims=True)
    flipped = labels.copy()
    flipped[7] = 2  # but it is labelled c
    issues = ea.label_issues(_oof(flipped.tolist(), probs.tolist()), CLASSES)
    assert issues["id"].tolist() == ["i7"]
    assert (issues.loc[0, "label"], issues.loc[0, "suggested"]) == ("c", "a")
    assert issues.loc[0, "p_label"] == pytest.approx(0.02)
    assert ea.label_issues(_oof(labels.tolist(), probs.tolist()), CLASSES).empty


# --- duplicates ----------------------------------------------------------------------------------------

def test_near_pairs_equal_brute_force():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**63, 400, dtype=np.uint64)
    for k in range(40):  # plant pairs 0..6 bits apart
        h[2 * k + 1] = h[2 * k] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, k % 7, replace=False)))
    d = np.array([[bin(int(a) ^ int(b)).count("1") for b in h] for a in h])
    for m in (0, 3, 6):
        want = [(i, j, int(d[i, j])) for i in range(len(h)) for j in range(i + 1, len(h)) if d[i, j] <= m]
        assert ea.near_pairs(h, m) == want


def test_duplicates_on_real_photographs(tmp_path):
    astro = skdata.astronaut()
    bgr = cv2.cvtColor(astro, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "astro.png"), bgr)
    small = cv2.resize(bgr, (300, 300), interpolation=cv2.INTER_AREA)  # resized and JPEG-recompressed
    cv2.imwrite(str(tmp_path / "astro_small.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 70])
    cv2.imwrite(str(tmp_path / "coffee.png"), cv2.cvtColor(skdata.coffee(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "astro_again.png"), bgr)
    items = pd.DataFrame({"id": ["astro", "astro_small", "coffee", "astro_again"],
                          "path": [str(tmp_path / n) for n in ("astro.png", "astro_small.jpg", "coffee.png",
                                                               "astro_again.png")],
                          "set": ["train", "test", "train", "train"], "label": [0, -1, 1, 2]})
    dups = ea.find_duplicates(items, lambda p: load_image(p, 256), CLASSES)
    pairs = {tuple(sorted((r.id_a, r.id_b))): r for r in dups.itertuples()}
    assert set(pairs) == {("astro", "astro_small"), ("astro", "astro_again"), ("astro_again", "astro_small")}
    assert pairs[("astro", "astro_again")].kind == "identical"
    assert pairs[("astro", "astro_again")].conflict  # labelled a and c
    assert pairs[("astro", "astro_small")].distance <= 2 and not pairs[("astro", "astro_small")].conflict
    assert dups.loc[0, "conflict"]  # conflicting labels listed first


def test_duplicates_reach_external_data_and_pseudo_pools(tmp_path):
    """A fundus photograph (scikit-image's retina) as a training image; a JPEG-recompressed, resized copy in a
    data.extra source and in an external pseudo pool: other bytes, so only the pHash search finds them."""
    import yaml

    from comp.report.explain import duplicate_search_items

    root = write_tiny_competition(tmp_path / "data")
    retina = cv2.cvtColor(skdata.retina(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "train" / "img_0_000.png"), retina)  # a real photograph as a training image
    small = cv2.resize(retina, (400, 400), interpolation=cv2.INTER_AREA)
    ext = tmp_path / "ext"
    (ext / "train").mkdir(parents=True)
    cv2.imwrite(str(ext / "train" / "e_0.jpeg"), small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(ext / "train" / "e_1.jpeg"), cv2.cvtColor(skdata.coffee(), cv2.COLOR_RGB2BGR))
    pd.DataFrame({"image": ["e_0", "e_1"], "level": [0, 1]}).to_csv(ext / "labels.csv", index=False)
    pool = tmp_path / "pool"
    pool.mkdir()
    cv2.imwrite(str(pool / "u_0.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 60])
    pseudo = tmp_path / "p.csv"
    pd.DataFrame({"id": ["u_0"], "path": [str(pool / "u_0.jpg")], "label": [0]}).to_csv(pseudo, index=False)
    entry = {"name": "dr", "root": str(ext), "train_csv": "labels.csv", "id_column": "image", "label_column": "level",
             "image_ext": ".jpeg", "label_map": {}}
    cfg = load_config(None, [*FAST, f"data.root={root}", "data.source=competition", f"data.pseudo={pseudo}",
                             "data.extra=[" + yaml.safe_dump(entry, default_flow_style=True).strip() + "]"])
    comp = load_competition(cfg)
    items = duplicate_search_items(cfg, comp, None)
    assert set(items["set"]) == {"train", "test", "extra:dr", "pseudo"}
    dups = ea.find_duplicates(items, lambda p: load_image(p, 64), CLASSES)
    found = {(r.id_a, r.set_b, r.id_b) for r in dups.itertuples() if r.id_a == "img_0_000"}
    assert ("img_0_000", "extra:dr", "e_0") in found and ("img_0_000", "pseudo", "pseudo:u_0") in found
    assert not any("e_1" in (r.id_a, r.id_b) for r in dups.itertuples())  # an unrelated photograph


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
    load_or_make_folds(base, full.train, out)
    with pytest.raises(UserError, match=r"folds.csv was made with data.exclude=\[\], the config now says"):
        load_or_make_folds(cfg, comp.train, out)
    (out / "folds.json").unlink()  # a hand-made split without the excluded images is still refused
    with pytest.raises(UserError, match="different set of images"):
        load_or_make_folds(cfg, comp.train, out)


def test_data_exclude_unset_keeps_old_hashes_and_folds(tiny):
    cfg = load_config(None, tiny["overrides"])  # checkpoints trained before the key keep their hash
    assert config_hash(cfg) == config_hash(cfg, tuple(k for k in HASHED_KEYS if k != "data.exclude"))
    comp = load_competition(cfg)
    folds = load_or_make_folds(cfg, comp.train, tiny["out"])
    assert "exclude" not in json.loads((tiny["out"] / "folds.json").read_text())  # as before the key existed
    assert load_or_make_folds(cfg, comp.train, tiny["out"])["fold"].tolist() == folds["fold"].tolist()


def test_explain_user_errors(tiny):
    code, _, err = run_main("explain.py", *tiny["overrides"])
    one_error(code, err, "has an oof.csv yet")
    code, _, err = run_main("explain.py", "--per-class", "0", *tiny["overrides"])
    one_error(code, err, "--per-class 0")
