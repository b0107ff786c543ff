"""The four real layouts read through their shipped configs: tables, labels in the competition's own
encoding, patients as groups, the quirks of each download; then prepare, a few training steps and a
scored submission on each replica."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT, run_script
from replicas import BUILDERS, build, overrides

from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config

NAMES = list(BUILDERS)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("replicas")
    return {name: build(name, base / name) for name in NAMES}


def cfg_for(name: str, root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides(root, out, FAST), *extra])


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


def test_chest_xray_two_different_images_with_one_id(replicas, tmp_path):
    root = tmp_path / "cx"
    shutil.copytree(replicas["chest_xray"], root)
    src = root / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    shutil.copy(root / "chest_xray" / "train" / "PNEUMONIA" / "person1_virus_6.jpeg",
                root / "chest_xray" / "val" / "NORMAL" / src.name)
    with pytest.raises(UserError, match="image id 'IM-0115-0001' appears twice"):
        load_competition(cfg_for("chest_xray", root, tmp_path))


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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_prepare_train_predict(replicas, tmp_path, name):
    """The shipped config on its replica: prepare.py (checks, cache, folds), a few steps of fold 0, and a
    submission in the competition's encoding, scored where the answers are known."""
    from comp.predict.submission import make_submission
    from comp.train import fit

    root = replicas[name]
    cache = tmp_path / "cache"
    out = tmp_path / "runs"
    ov = [*overrides(root, out, FAST), f"images.cache_dir={cache}"]
    run_script("prepare.py", "--config", str(ROOT / "configs" / f"{name}.yaml"), *ov, check=True)
    folds = pd.read_csv(out / "folds.csv", dtype=str)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    comp_cfg = cfg_for(name, root, out, f"images.cache_dir={cache}", "predict.folds=[0]")  # fold 0 alone
    entries = list(cache.rglob(f"*.{comp_cfg.images.cache_format}"))
    comp = load_competition(comp_cfg)
    assert len(entries) == len(comp.train) + len(comp.test)  # every image cached once

    result = fit(comp_cfg, 0)
    assert np.isfinite(result["best"]) and (out / "fold0" / "best.pt").is_file()
    sub = make_submission(comp_cfg)
    sample_ids = [str(i) for i in comp.test["id"]]
    assert sorted(sub.frame.iloc[:, 0].astype(str)) == sorted(sample_ids)
    assert set(sub.frame.iloc[:, 1].astype(str)) <= {str(v) for v in comp.label_values}
    if name in ("chest_xray", "cnmc2019"):  # labelled held-out sets
        assert sub.score is not None and 0 <= sub.score <= 1
