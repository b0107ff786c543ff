"""The error analysis (comp.report.errors_analysis): the top losses, the confused pairs, the per-patient
metrics and the label-issue candidates against their definitions, and duplicate images found by their
perceptual hashes on real photographs, across the training, test, extra and pseudo-label pools."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import FAST, write_tiny_competition
from skimage import data as skdata

from comp.data.competition import load_competition
from comp.data.readers import load_image
from comp.experiment import load_config
from comp.report import errors_analysis as ea

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


def test_degenerate_images_are_not_duplicates_but_a_real_copy_is(tmp_path):
    """imagehash#134: a blue and a white image share one pHash (so do black, greys of any brightness, and a
    nearly flat image); each is a hash collision, not a copy, and none is reported. A resized, JPEG-re-encoded
    copy of scikit-image's fundus photograph (retina) and of the astronaut is still found, and a byte-for-byte
    equal one is `identical`."""
    flat = {"black": (0, 0, 0), "white": (255, 255, 255), "blue": (0, 0, 254), "grey": (128, 128, 128),
            "dark_grey": (60, 60, 60)}
    rows = []
    for k, (name, rgb) in enumerate(flat.items()):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((300, 300, 3), rgb[::-1], np.uint8))
        rows.append((name, "train", k % 3))
    faint = np.full((300, 300), 100, np.uint8)
    faint[::7] = 101  # one grey level of texture: flat for the eye and for the hash
    cv2.imwrite(str(tmp_path / "faint.png"), faint)
    rows.append(("faint", "train", 1))
    for name, img in (("retina", skdata.retina()), ("astro", skdata.astronaut()), ("coffee", skdata.coffee())):
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(tmp_path / f"{name}.png"), bgr)
        small = cv2.resize(bgr, (bgr.shape[1] * 2 // 5, bgr.shape[0] * 2 // 5), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(tmp_path / f"{name}_copy.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 60])
        rows += [(name, "train", 0), (f"{name}_copy", "test", -1)]
    cv2.imwrite(str(tmp_path / "astro_again.png"), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    rows.append(("astro_again", "train", 2))
    items = pd.DataFrame(rows, columns=["id", "set", "label"])
    ext = {r: ".jpg" if r.endswith("_copy") else ".png" for r in items["id"]}
    items["path"] = [str(tmp_path / f"{i}{ext[i]}") for i in items["id"]]
    dups = ea.find_duplicates(items, lambda p: load_image(p, 128), CLASSES)
    pairs = {tuple(sorted((r.id_a, r.id_b))): r for r in dups.itertuples()}
    assert set(pairs) == {("retina", "retina_copy"), ("astro", "astro_copy"), ("astro", "astro_again"),
                          ("astro_again", "astro_copy"), ("coffee", "coffee_copy")}
    assert pairs[("astro", "astro_again")].kind == "identical" and pairs[("retina", "retina_copy")].kind == "near"
    assert dups["correlation"].min() >= ea.MIN_CORRELATION
    hashes = ea.phash_bits(load_image(p, 128) for p in items["path"][:6])
    assert len(ea.near_pairs(hashes, 4)) == 15  # the collision is real: every two flat images are candidates


def test_review_page_shows_both_images_when_a_test_image_has_a_training_id():
    """Ids are unique within a set, not across: test `1` and train `1` (two folders' counters) are two
    images on the page."""
    from comp.report.explain import data_uri, html_page

    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    dups = pd.DataFrame([{"id_a": "1", "set_a": "train", "label_a": "x", "id_b": "1", "set_b": "test",
                          "label_b": "", "distance": 0, "correlation": 0.99, "kind": "near", "conflict": False}])
    page = html_page("t", {}, {"duplicates": dups}, {("train", "1"): a, ("test", "1"): b})
    assert data_uri(a) in page and data_uri(b) in page
