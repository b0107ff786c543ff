"""comp.data.competition: a download read as it comes, through the shipped configs, on a replica of each real
download (tests/replicas.py): tables, labels in the competition's own encoding, patients as groups, the quirks
of each download (a BOM, CRLF line ends, a tree unzipped twice, macOS debris, nested folders, a test CSV with
its own id column, no test set); ids unique in any folder layout, a copy dropped only when byte-identical;
an id without its image, a bad label, a group pattern that misses ids, each refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT, tiny_config
from replicas import HAM_CLASSES, RANZCR_LABELS, build, overrides, rsna_bone_age

from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict[str, Path]:
    """The replicas, each built once, on first use, and only read (a test that changes one works on a copy)."""
    base = tmp_path_factory.mktemp("replicas")

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = build(name, base / name)
            return self[name]

    return Lazy()


def cfg_for(name: str, root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides(root, out, FAST), *extra])


# --- the shipped configs on their replicas -----------------------------------------------------------------


def test_aptos2019(replicas, tmp_path):
    comp = load_competition(cfg_for("aptos2019", replicas["aptos2019"], tmp_path))
    assert len(comp.train) == 36 and len(comp.test) == 8  # the BOM did not hide the id_code column
    assert comp.classes == ["no_dr", "mild", "moderate", "severe", "proliferative"]
    assert comp.label_values == [0, 1, 2, 3, 4]
    raw = pd.read_csv(replicas["aptos2019"] / "train.csv", encoding="utf-8-sig", dtype={"id_code": str})
    merged = comp.train.merge(raw, left_on="id", right_on="id_code")
    assert (merged["label"] == merged["diagnosis"]).all()  # labels spelt by value map to their class
    assert (comp.train["group"] == comp.train["id"]).all()  # no patient ids in APTOS
    assert list(comp.test["id"]) == pd.read_csv(replicas["aptos2019"] / "test.csv", dtype=str)["id_code"].tolist()
    assert "label" not in comp.test


def test_dr2015(replicas, tmp_path):
    comp = load_competition(cfg_for("dr2015", replicas["dr2015"], tmp_path))
    assert len(comp.train) == 40 and len(comp.test) == 12  # CRLF line ends read fine
    g = comp.train.set_index("id")["group"]
    assert g["10_left"] == g["10_right"] == "10"
    assert comp.train["group"].nunique() == 20
    assert all(p.endswith(".jpeg") for p in comp.train["path"])


def test_chest_xray(replicas, tmp_path):
    comp = load_competition(cfg_for("chest_xray", replicas["chest_xray"], tmp_path))
    # train + val, one copy of the doubled tree, no __MACOSX/._* files
    assert len(comp.train) == 24 and comp.train["id"].is_unique
    rel = [Path(p).relative_to(replicas["chest_xray"]).parts for p in comp.train["path"]]
    assert all(r[:2] != ("chest_xray", "chest_xray") and "__MACOSX" not in r for r in rel)
    assert comp.classes == ["NORMAL", "PNEUMONIA"] and comp.label_values == ["NORMAL", "PNEUMONIA"]
    g = comp.train.set_index("id")["group"]
    assert g["person1_bacteria_1"] == g["person1_virus_6"] == "person1"
    assert g["IM-0115-0001"] == g["IM-0115-0002"] == "IM-0115"
    assert g["NORMAL2-IM-0381-0001"] == "IM-0381"
    assert (comp.train.set_index("id")["label"][["IM-0115-0001", "person1_virus_6"]] == [0, 1]).all()
    # the labelled test folder is the held-out set, its answers kept for scoring
    assert len(comp.test) == 8 and sorted(comp.test["label"]) == [0] * 4 + [1] * 4


def test_chest_xray_val_reusing_a_train_name_is_another_image(replicas, tmp_path):
    """val/ read with train/ (data.train_images) holding another image under a training image's name: two
    images, two ids (`<split>/<class>/<name>`), the patient pattern still finding the patient."""
    root = tmp_path / "cx"
    shutil.copytree(replicas["chest_xray"], root)
    src = root / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    shutil.copy(root / "chest_xray" / "train" / "PNEUMONIA" / "person1_virus_6.jpeg",
                root / "chest_xray" / "val" / "NORMAL" / src.name)
    t = load_competition(cfg_for("chest_xray", root, tmp_path)).train.set_index("id")
    assert t.index.is_unique and len(t) == 25
    both = t.loc[["train/NORMAL/IM-0115-0001", "val/NORMAL/IM-0115-0001"]]
    assert [Path(p).parts[-3] for p in both["path"]] == ["train", "val"] and set(both["group"]) == {"IM-0115"}


def test_cnmc2019(replicas, tmp_path):
    comp = load_competition(cfg_for("cnmc2019", replicas["cnmc2019"], tmp_path))
    t = comp.train.set_index("id")
    assert comp.classes == ["hem", "all"] and comp.label_values == [0, 1]
    assert (t.loc[t.index.str.endswith("_all"), "label"] == 1).all()
    assert (t.loc[t.index.str.endswith("_hem"), "label"] == 0).all()
    assert set(t["group"]) == {"11", "12", "13", "14", "15", "H10", "H11", "H12", "H13"}
    assert all(p.endswith(".bmp") for p in t["path"])
    # the preliminary test set, named as its labels CSV names it
    assert list(comp.test["id"]) == [f"{n}.bmp" for n in range(1, 9)]


def test_an_id_without_image(replicas, tmp_path):
    root = tmp_path / "a"
    shutil.copytree(replicas["aptos2019"], root)
    gone = sorted((root / "train_images").iterdir())[0]
    gone.unlink()
    cfg = cfg_for("aptos2019", root, tmp_path)
    with pytest.raises(UserError) as e:
        load_competition(cfg)
    assert "1 id(s) in" in str(e.value) and gone.name in str(e.value) and "\n" not in str(e.value)
    comp = load_competition(cfg, strict=False)  # prepare's mode: collected, the row dropped
    assert len(comp.train) == 35 and [(q.kind, Path(q.path).name) for q in comp.problems] == [("missing", gone.name)]


def test_bad_label_names_its_row(replicas, tmp_path):
    root = tmp_path / "a"
    shutil.copytree(replicas["aptos2019"], root)
    df = pd.read_csv(root / "train.csv", encoding="utf-8-sig", dtype=str)
    df.loc[4, "diagnosis"] = "7"
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train.csv: row 6 has label '7', not one of the classes"):
        load_competition(cfg_for("aptos2019", root, tmp_path))


def test_class_values_need_one_per_class(tmp_path):
    with pytest.raises(UserError, match="data.class_values"):
        load_config(ROOT / "configs" / "cnmc2019.yaml", ["data.class_values=[0,1,2]"])


def test_isic2020_reads_patients_and_the_malignant_target(replicas, tmp_path):
    root = replicas["isic2020"]
    comp = load_competition(cfg_for("isic2020", root, tmp_path))
    raw = pd.read_csv(root / "train.csv", dtype=str)
    assert list(comp.train["id"]) == list(raw["image_name"])
    assert list(comp.train["group"]) == list(raw["patient_id"])  # data.group_column, not the image
    assert comp.classes == ["benign", "malignant"] and comp.label_values == [0, 1]
    assert list(comp.train["label"]) == [int(t) for t in raw["target"]]
    assert all(Path(p).parent == root / "jpeg" / "train" for p in comp.train["path"])
    assert list(comp.test["id"]) == list(pd.read_csv(root / "test.csv", dtype=str)["image_name"])


def test_ranzcr_reads_eleven_labels_in_the_samples_order(replicas, tmp_path):
    root = replicas["ranzcr_clip"]
    cfg = cfg_for("ranzcr_clip", root, tmp_path)
    assert list(cfg.data.label_columns) == RANZCR_LABELS
    comp = load_competition(cfg)
    raw = pd.read_csv(root / "train.csv", dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert comp.classes == list(sample.columns[1:]) == RANZCR_LABELS
    assert np.array_equal(comp.targets(comp.train), raw[RANZCR_LABELS].astype(np.float32).to_numpy())
    assert list(comp.train["group"]) == list(raw["PatientID"])
    assert list(comp.test["id"]) == list(sample["StudyInstanceUID"])  # dotted UIDs + .jpg find their files


def test_bone_age_reads_case_ids_from_the_test_csv(replicas, tmp_path):
    root = replicas["rsna_bone_age"]
    comp = load_competition(cfg_for("rsna_bone_age", root, tmp_path))
    raw = pd.read_csv(root / "boneage-training-dataset.csv")
    assert comp.train["label"].dtype.kind == "f"
    assert np.allclose(comp.targets(comp.train), raw["boneage"].to_numpy())
    assert list(comp.test["id"]) == [str(i) for i in pd.read_csv(root / "boneage-test-dataset.csv")["Case ID"]]
    # without data.test_id_column the test CSV has no `id` column: refused, naming it
    with pytest.raises(UserError, match=r"boneage-test-dataset.csv.*'id'"):
        load_competition(cfg_for("rsna_bone_age", root, tmp_path, "data.test_id_column=''"))
    assert all(Path(p).parent.parent.name == Path(p).parent.name for p in comp.train["path"])  # nested
    flat = rsna_bone_age(tmp_path / "flat", nested=False)  # a copy re-zipped without the nesting reads alike
    comp2 = load_competition(cfg_for("rsna_bone_age", flat, tmp_path))
    assert len(comp2.train) == len(comp.train) and len(comp2.test) == len(comp.test)


def test_ham10000_keeps_lesions_whole_and_has_no_test_set(replicas, tmp_path):
    from comp.predict.submission import make_submission

    root = replicas["ham10000"]
    cfg = cfg_for("ham10000", root, tmp_path)
    comp = load_competition(cfg)
    raw = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str)
    assert sorted(comp.train["id"]) == sorted(raw["image_id"])  # one copy each, not the lower-case folders'
    assert all(Path(p).parent.name.startswith("HAM10000_images_part_") for p in comp.train["path"])
    assert comp.classes == HAM_CLASSES
    assert comp.train["group"].nunique() == raw["lesion_id"].nunique() < len(raw)
    assert comp.test.empty
    with pytest.raises(UserError, match="no test images"):
        make_submission(cfg)


# --- ids unique in any folder layout; copies by content ----------------------------------------------


def _folderstiny_config(root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / "chest_xray.yaml", [*overrides(root, out, FAST), *extra])


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))


def test_byte_identical_copy_dropped_but_same_size_other_image_refused(replicas, tmp_path):
    chest = replicas["chest_xray"]
    """The replica holds its tree twice (as the real zip does): the copies are dropped. A copy that has
    the first one's size but other bytes is another image under the same id: an error naming both."""
    assert len(load_competition(_folderstiny_config(chest, tmp_path)).train) == 24  # one of each doubled file
    root = tmp_path / "cx"
    shutil.copytree(chest, root)
    copy = root / "chest_xray" / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other contents (the JPEG's scan data)
    copy.write_bytes(bytes(data))
    assert copy.stat().st_size == (root / "chest_xray" / "train" / "NORMAL" / copy.name).stat().st_size
    with pytest.raises(UserError, match="image id 'IM-0115-0001' appears twice .*different contents") as e:
        load_competition(_folderstiny_config(root, tmp_path))
    assert str(copy) in str(e.value) and str(root / "chest_xray" / "train" / "NORMAL" / copy.name) in str(e.value)


def test_class_folders_reusing_file_names_get_unique_ids(replicas, tmp_path):
    chest = replicas["chest_xray"]
    """`1.png` in each class folder (one counter per class, as many Kaggle datasets number their files):
    every image is kept, under a unique id `<class>/<name>`; labels follow the folders."""
    root = tmp_path / "d"
    for cls, values in (("NORMAL", (10, 20, 30)), ("PNEUMONIA", (200, 210, 220))):
        for k, v in enumerate(values, 1):
            _png(root / "chest_xray" / "train" / cls / f"{k}.png", v)
    _png(root / "chest_xray" / "test" / "NORMAL" / "1.png", 40)
    _png(root / "chest_xray" / "test" / "PNEUMONIA" / "1.png", 230)
    comp = load_competition(_folderstiny_config(root, tmp_path, "data.group_pattern=''"))
    t = comp.train.set_index("id")
    assert sorted(t.index) == ["NORMAL/1", "NORMAL/2", "NORMAL/3", "PNEUMONIA/1", "PNEUMONIA/2", "PNEUMONIA/3"]
    assert list(t.loc[["NORMAL/1", "PNEUMONIA/1"], "label"]) == [0, 1]
    assert all(Path(p).parent.name == i.split("/")[0] for i, p in t["path"].items())
    # the held-out test folder reuses the names too: its ids stay apart from the training ids
    assert sorted(comp.test["id"]) == ["test/NORMAL/1", "test/PNEUMONIA/1"]
    # names unique across classes (the real chest X-ray): ids stay the plain names
    assert "IM-0115-0001" in set(load_competition(_folderstiny_config(chest, tmp_path)).train["id"])


def test_unlabelled_folder_with_one_name_in_two_formats_is_two_images(tmp_path):
    """Test images straight in a folder: `1.png` and `1.jpg` with other contents are two images: ids keep
    the extension."""
    root = tmp_path / "d"
    for cls in ("NORMAL", "PNEUMONIA"):
        for k in range(2):
            _png(root / "chest_xray" / "train" / cls / f"{cls}_{k}.png", 50 * k + (100 if cls == "NORMAL" else 0))
    _png(root / "chest_xray" / "test" / "1.png", 1)
    cv2.imwrite(str(root / "chest_xray" / "test" / "1.jpg"), np.full((8, 8), 99, np.uint8))
    test = load_competition(_folderstiny_config(root, tmp_path, "data.group_pattern=''")).test
    assert sorted(test["id"]) == ["1.jpg", "1.png"]
    assert sorted(Path(p).name for p in test["path"]) == ["1.jpg", "1.png"]


# Every way a folder layout repeats a file name (folders layout): files {path under data.root: grey value},
# data.train_images, and the ids wanted. Different values = different images; each is kept under a unique id.
LAYOUTS = {
    "class folders": ({"train/NORMAL/1.png": 10, "train/PNEUMONIA/1.png": 200}, ["train"],
                      ["NORMAL/1", "PNEUMONIA/1"]),
    "split folders read together": ({"train/NORMAL/1.png": 10, "val/NORMAL/1.png": 20, "val/PNEUMONIA/2.png": 200},
                                    ["train", "val"], ["train/NORMAL/1", "val/NORMAL/1", "val/PNEUMONIA/2"]),
    "nested folders of one glob": ({"data/fold_0/NORMAL/1.png": 10, "data/fold_1/NORMAL/1.png": 20,
                                    "data/fold_1/PNEUMONIA/1.png": 200}, ["data/fold_*"],
                                   ["fold_0/NORMAL/1", "fold_1/NORMAL/1", "fold_1/PNEUMONIA/1"]),
    "nested split under a split": ({"a/train/NORMAL/1.png": 10, "b/train/NORMAL/2.png": 20,
                                    "a/x/train/PNEUMONIA/1.png": 200, "b/x/train/PNEUMONIA/1.png": 210},
                                   ["**/train"], ["a/train/NORMAL/1", "b/train/NORMAL/2", "a/x/train/PNEUMONIA/1",
                                                  "b/x/train/PNEUMONIA/1"]),
    "one stem, two formats": ({"train/NORMAL/1.png": 10, "train/NORMAL/1.bmp": 20, "train/PNEUMONIA/2.png": 200},
                              ["train"], ["1.bmp", "1.png", "2.png"]),
    "sub-folders inside a class folder": ({"train/NORMAL/1.png": 10, "train/NORMAL/more/1.png": 20,
                                          "train/PNEUMONIA/2.png": 200}, ["train"],
                                         ["NORMAL/1", "more/1", "PNEUMONIA/2"]),
    "a byte-identical copy in another split": ({"train/NORMAL/1.png": 10, "val/NORMAL/1.png": 10,
                                                "train/PNEUMONIA/2.png": 200}, ["train", "val"], ["1", "2"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ids_are_unique_whatever_the_layout(layout, tmp_path):
    files, train_images, want = LAYOUTS[layout]
    root = tmp_path / "d"
    for rel, value in files.items():
        _png(root / rel, value)
    cfg = _folderstiny_config(root, tmp_path, "data.group_pattern=''", f"data.train_images={train_images}",
                              "data.test_images=[none]")
    t = load_competition(cfg).train
    assert sorted(t["id"]) == sorted(want)
    assert t["path"].is_unique and set(t["path"]) <= {str(root / r) for r in files}  # each file once at most
    labels = dict(zip(t["id"], t["label"], strict=True))
    assert all(labels[i] == int("PNEUMONIA" in p) for i, p in zip(t["id"], t["path"], strict=True))


@pytest.mark.parametrize("same", [True, False])
def test_csv_id_in_two_matched_folders(same, tiny_root, tmp_path):
    """csv layout, train/ and val/ read together: a CSV id whose file is in both is one image when the files
    are byte-identical, and refused naming both files when they differ (which one the id means is unknown)."""
    (tiny_root / "val").mkdir()
    src = tiny_root / "train" / "img_0_003.png"
    if same:
        shutil.copy(src, tiny_root / "val" / src.name)
    else:
        _png(tiny_root / "val" / src.name, 7)
    cfg = tiny_config(tiny_root, "data.train_images=[train,val]")
    if same:
        t = load_competition(cfg).train.set_index("id")
        assert t.at["img_0_003", "path"] == str(src)
        return
    with pytest.raises(UserError, match="id 'img_0_003' in .*train.csv names two different files") as e:
        load_competition(cfg)
    assert str(src) in str(e.value) and str(tiny_root / "val" / src.name) in str(e.value)


# --- what a new user's labels trip on -------------------------------------------------------------------


def test_group_pattern_missing_ids_is_refused_or_explicitly_own(tiny_root):
    with pytest.raises(UserError) as e:  # img_0_*, img_1_* match; the 10 img_2_* do not
        load_competition(tiny_config(tiny_root, r"data.group_pattern='^img_([01])_'"))
    msg = str(e.value)
    assert "10 of 30" in msg and "'img_2_000'" in msg and "data.group_unmatched=own" in msg and "\n" not in msg
    comp = load_competition(tiny_config(tiny_root, r"data.group_pattern='^img_([01])_'", "data.group_unmatched=own"))
    groups = dict(zip(comp.train["id"], comp.train["group"], strict=True))
    assert groups["img_0_003"] == "0" and groups["img_1_009"] == "1" and groups["img_2_004"] == "img_2_004"
    with pytest.raises(UserError, match="matches no patient in 30 of 30"):
        load_competition(tiny_config(tiny_root, "data.group_pattern=nomatch"))
    with pytest.raises(UserError, match="data.group_unmatched"):
        tiny_config(tiny_root, "data.group_unmatched=maybe")
