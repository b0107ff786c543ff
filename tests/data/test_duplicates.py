"""comp.data.duplicates: copies inside the training set are kept in one fold (SIIM-ISIC 2020 repeated
photographs under other names and patient ids): identical images (the same pixels, other bytes) found by
prepare from the cache it built, pairs fed back from scripts/explain.py's duplicates.csv through
data.duplicates (joined transitively with the patient groups), flat images left alone; a data.extra image
listed as a copy of a training image is left out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import FAST, one_error, run_main, tiny_config, write_tiny_competition

from comp.data import cache
from comp.data.competition import load_competition
from comp.data.duplicates import byte_duplicates, identical_sets, join_groups, pixel_digest
from comp.data.extra import load_extra
from comp.experiment import Experiment


def _prepare(root: Path, *extra: str, n_folds: int = 5) -> tuple[pd.DataFrame, dict, str]:
    """scripts/prepare.py on the competition under root: folds.csv, folds.json, stderr."""
    ov = [*FAST, f"data.root={root}", f"out_dir={root.parent / 'runs'}", "data.source=competition",
          f"folds.n_folds={n_folds}", f"images.cache_dir={root.parent / 'cache'}", *extra]
    code, _, err = run_main("prepare.py", *ov)
    assert code == 0, err[-2000:]
    runs = root.parent / "runs"
    folds = pd.read_csv(runs / "folds.csv", dtype={"id": str, "group": str}).set_index("id")
    return folds, json.loads((runs / "folds.json").read_text()), err


def _recode(src: Path, dest: Path) -> None:
    """The same pixels in another file: PNG at another compression level (other bytes)."""
    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(dest), img, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert dest.read_bytes() != src.read_bytes()


def test_identical_training_images_share_a_fold_and_are_counted(tmp_path, monkeypatch):
    """Four images of class 0 re-saved under class-1 and class-2 names (other bytes, same pixels, other
    labels, as SIIM's copies had other patient ids): each copy lands in its original's fold, the warning
    names the pairs, folds.json counts them; two flat black images are not joined. Hashing reads the cache
    prepare built: every image is decoded once."""
    root = write_tiny_competition(tmp_path / "data", n_per_class=12)
    train = root / "train"
    copies = {"img_1_000": "img_0_000", "img_2_001": "img_0_000", "img_1_002": "img_0_002",
              "img_2_003": "img_0_003", "img_2_004": "img_0_004"}
    for copy, orig in copies.items():
        _recode(train / f"{orig}.png", train / f"{copy}.png")
    for name in ("img_1_010", "img_2_010"):  # flat: no photograph's copy
        cv2.imwrite(str(train / f"{name}.png"), np.zeros((24, 24, 3), np.uint8))
    decoded = []
    real = cache.load_preprocessed
    monkeypatch.setattr(cache, "load_preprocessed", lambda p, *a, **k: (decoded.append(p), real(p, *a, **k))[1])
    folds, made, err = _prepare(root)
    for copy, orig in copies.items():
        assert folds.at[copy, "fold"] == folds.at[orig, "fold"], (copy, orig)
    assert folds.loc["img_1_010", "group"] == "img_1_010"  # folds.csv keeps the patient; the split joined
    assert made["copies"]["identical_images"] == 9 and made["copies"]["groups_joined"] == 5
    assert sorted(map(sorted, made["copies"]["identical"])) == [
        ["img_0_000", "img_1_000", "img_2_001"], ["img_0_002", "img_1_002"], ["img_0_003", "img_2_003"],
        ["img_0_004", "img_2_004"]]
    line = next(ln for ln in err.splitlines() if "identical training images" in ln)
    assert line.startswith("warning: folds: 5 pair(s)") and "'img_0_000' = 'img_1_000'" in line
    assert not any("img_1_010" in s for s in made["copies"]["identical"])
    assert len(decoded) == 36 + 9  # the cache build; the hashing read its entries
    # the flat black images end up wherever the stratified split puts them (no group of their own made)
    assert set(folds["fold"]) == set(range(5))


def test_no_copies_leaves_the_split_as_before(tmp_path):
    """Without copies the split is the plain stratified one it always was (only folds.json says so)."""
    from comp.data.folds import split

    root = write_tiny_competition(tmp_path / "data")
    folds, made, _ = _prepare(root)
    cfg = tiny_config(root, "folds.n_folds=5")
    train = load_competition(cfg).train
    want = split(train, 5, int(cfg.folds.seed), grouped=False)
    assert (folds.loc[train["id"], "fold"].to_numpy() == want.to_numpy()).all()
    assert made["copies"] == {"identical_images": 0, "identical": [], "groups_joined": 0}


def test_pairs_from_explain_join_patients_transitively_and_leave_out_extra_copies(tmp_path):
    """data.duplicates = scripts/explain.py's duplicates.csv (its columns): train pairs a=b, b=c join the
    patients of a, b and c into one fold (patients: group_pattern, ids by tens); a data.extra image
    paired with a training image is left out; test pairs are not the split's business. Changing the list
    later is refused like data.exclude."""
    root = write_tiny_competition(tmp_path / "data", n_per_class=15)  # patients: ids by tens, 10 + 5 a class
    ext = tmp_path / "ext"
    (ext / "train").mkdir(parents=True)
    for k in range(2):
        cv2.imwrite(str(ext / "train" / f"e_{k}.png"), np.random.default_rng(k).integers(0, 255, (24, 24, 3),
                                                                                          dtype=np.uint8))
    pd.DataFrame({"image": ["e_0", "e_1"], "level": [0, 1]}).to_csv(ext / "labels.csv", index=False)
    cols = ["id_a", "set_a", "label_a", "id_b", "set_b", "label_b", "distance", "kind", "conflict"]
    dup = pd.DataFrame([["img_0_000", "train", "0", "img_1_014", "train", "1", 2, "near", True],
                        ["img_1_014", "train", "1", "img_2_008", "train", "2", 1, "near", True],
                        ["img_0_003", "train", "0", "e_1", "extra:dr", "", 3, "near", False],
                        ["img_0_005", "train", "0", "test_001", "test", "", 0, "near", False],
                        ["gone", "train", "0", "img_0_001", "train", "0", 0, "near", False]], columns=cols)
    dup.to_csv(tmp_path / "duplicates.csv", index=False)
    entry = {"name": "dr", "root": str(ext), "train_csv": "labels.csv", "id_column": "image", "label_column": "level",
             "label_map": {}}
    over = [r"data.group_pattern='^img_(\d_\d\d)\d$'", f"data.duplicates={tmp_path / 'duplicates.csv'}",
            "data.extra=[" + yaml.safe_dump(entry, default_flow_style=True).strip() + "]"]
    folds, made, err = _prepare(root, *over, n_folds=3)
    joined = folds["group"].isin(["0_00", "1_01", "2_00"])  # the patients of img_0_000, img_1_014, img_2_008
    assert joined.sum() == 25 and folds.loc[joined, "fold"].nunique() == 1  # 3 patients joined by 2 pairs
    assert made["copies"]["listed_pairs"] == 2 and made["copies"]["groups_joined"] == 2
    assert made["duplicates"] == str(tmp_path / "duplicates.csv")
    assert "1 pair(s) of training images name an id not among them (e.g. 'gone'" in err
    assert "data.extra 'dr': 1 image(s) are listed in data.duplicates as copies" in err
    cfg = tiny_config(root, *over, "folds.n_folds=3", out=root.parent / "runs")
    comp = load_competition(cfg)
    assert list(load_extra(cfg, comp)["id"]) == ["e_0"]
    code, _, err = run_main("prepare.py", *FAST, f"data.root={root}", f"out_dir={root.parent / 'runs'}",
                            "data.source=competition", "folds.n_folds=3", *over[:1], *over[2:])
    one_error(code, err, "folds.csv was made with data.duplicates=", "delete it")


def test_a_missing_pair_list_fails_before_the_cache(tmp_path):
    root = write_tiny_competition(tmp_path / "data")
    code, _, err = run_main("prepare.py", *FAST, f"data.root={root}", f"out_dir={tmp_path / 'runs'}",
                            "data.source=competition", f"images.cache_dir={tmp_path / 'cache'}",
                            f"data.duplicates={tmp_path / 'nope.csv'}")
    one_error(code, err, "data.duplicates", "nope.csv", "does not exist")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))
    (tmp_path / "bad.csv").write_text("a,b\nx,y\n")
    code, _, err = run_main("prepare.py", *FAST, f"data.root={root}", f"out_dir={tmp_path / 'runs'}",
                            "data.source=competition", f"data.duplicates={tmp_path / 'bad.csv'}")
    one_error(code, err, "data.duplicates", "bad.csv", "missing column 'id_a'")


def test_join_groups_is_transitive_over_patients():
    ids = pd.Series(["a1", "a2", "b1", "c1", "d1", "e1"])
    groups = pd.Series(["A", "A", "B", "C", "D", "E"])
    out = join_groups(ids, groups, [("a2", "c1"), ("c1", "e1"), ("zz", "b1")])  # zz: not an image here
    assert out.tolist() == ["A", "A", "B", "A", "D", "A"]
    assert join_groups(ids, groups, []).tolist() == groups.tolist()


def test_pixel_digest_and_identical_sets_in_threads():
    rng = np.random.default_rng(0)
    imgs = {f"p{k}": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for k in range(80)}
    imgs["p79"] = imgs["p3"].copy()
    imgs["p78"] = np.full((8, 8, 3), 128, np.uint8)  # flat: no digest
    imgs["p77"] = np.full((8, 8, 3), 128, np.uint8)
    assert pixel_digest(imgs["p78"]) is None and pixel_digest(imgs["p3"]) == pixel_digest(imgs["p79"])
    assert pixel_digest(imgs["p3"]) != pixel_digest(imgs["p3"].reshape(8, 24))  # the shape counts
    ids = list(imgs)
    assert identical_sets(ids, ids, imgs.__getitem__, workers=4) == [["p3", "p79"]]
    assert identical_sets(ids, ids, imgs.__getitem__, workers=1) == [["p3", "p79"]]


def test_an_existing_split_is_read_not_rehashed(tmp_path, monkeypatch):
    """folds.csv exists: no image is read again (the hashing happens once, when the split is made)."""
    from comp.data import folds as folds_mod

    root = write_tiny_competition(tmp_path / "data")
    _prepare(root)
    cfg = tiny_config(root, "folds.n_folds=5", out=root.parent / "runs")
    monkeypatch.setattr(folds_mod, "split_groups", lambda *a: pytest.fail("hashed again"))
    folds_mod.load_or_make_folds(cfg, load_competition(cfg).train, Experiment(cfg).split)


def test_byte_copies_of_windows_and_slices_are_their_files_at_the_same_offset(tmp_path):
    """`<file>#<offset>` (a recording's window, a NIfTI volume's slice): a byte-identical file at the same
    offset is a copy, another offset of it is not, and the window is not skipped as a missing file."""
    a, b, c = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "c.nii.gz"
    a.write_bytes(b"volume bytes" * 10)
    b.write_bytes(a.read_bytes())
    c.write_bytes(b"other volume" * 10)
    found = byte_duplicates([f"{b}#3", f"{b}#4", f"{c}#3", str(b)], [f"{a}#3", str(a)])
    assert found == {f"{b}#3": f"{a}#3", str(b): str(a)}
