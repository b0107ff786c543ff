"""Pseudo-labels (comp.teacher.pseudo, data.pseudo, scripts/pseudo.py) and their leak rules: a pseudo-label
file made by other models, on another split or edited after its record is caught, training images (copies
under other names, or their ids) never become pseudo rows, and the pseudo-labelled images are cached by
prepare like the competition's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import one_error, run_main
from teacher_run import student, trained_teacher

from comp.data.competition import load_competition
from comp.data.download import make_demo
from comp.errors import UserError
from comp.io import sha256_file
from comp.teacher.pseudo import make_pseudo
from comp.teacher.pseudo_rows import record_path
from comp.train.build import build_run
from comp.train.loop import fit


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict:
    return trained_teacher(tmp_path_factory)


def test_pseudo_round_and_its_leak_rules(teacher, tmp_path):
    cfg = teacher["cfg"]
    comp = load_competition(cfg)
    out = tmp_path / "pseudo.csv"
    rows = make_pseudo(cfg, comp, out, 0.0, False, test=True, images=[], probs=None)
    assert len(rows) == len(comp.test) and set(rows.columns) == {"id", "path", "label"}
    record = json.loads(record_path(out).read_text())
    assert record["csv_sha256"] == sha256_file(out) and len(record["checkpoints"]) == 2
    s = student(teacher, "p", f"data.pseudo={out}")
    run = build_run(s, 0, resume=False)
    n_train = int((pd.read_csv(teacher["out"] / "folds.csv")["fold"] != 0).sum())
    assert len(run.data.train_set) == n_train + len(rows)  # pseudo rows in training, and counted
    assert json.loads((run.dir / "sources.json").read_text())["train_images"] == {"competition": n_train,
                                                                                  "pseudo": len(rows)}
    assert len(run.data.valid_set) == int((pd.read_csv(teacher["out"] / "folds.csv")["fold"] == 0).sum())
    assert fit(s, 0)["best"] >= 0
    soft = make_pseudo(cfg, comp, tmp_path / "soft.csv", 0.34, True, test=True, images=[], probs=None)
    assert all(c.startswith("prob_") for c in soft.columns[2:]) and (soft.iloc[:, 2:].max(axis=1) >= 0.34).all()

    # leak: an "external" pool holding copies of training images under other names: left out, recorded
    pool = tmp_path / "pool"
    pool.mkdir()
    copies = comp.train["path"].iloc[[0, 5]].tolist()
    for k, p in enumerate(copies):
        shutil.copyfile(p, pool / f"ext_{k}.png")
    shutil.copyfile(comp.test["path"].iloc[0], pool / "ext_new.png")  # not a training image: kept
    mixed = make_pseudo(cfg, comp, tmp_path / "pool.csv", 0.0, False, test=False, images=[str(pool)], probs=None)
    assert mixed["id"].tolist() == ["ext_new"]
    assert json.loads(record_path(tmp_path / "pool.csv").read_text())["left_out_copies"] == {
        str(pool / f"ext_{k}.png"): p for k, p in enumerate(copies)}
    with pytest.raises(UserError, match="every image is a copy of a training image"):
        make_pseudo(cfg, comp, tmp_path / "all.csv", 0.0, False, test=False,
                    images=[str(Path(comp.train["path"].iloc[0]).parent)], probs=None)

    # an external image under a training image's name (other pixels): refused when written, naming both
    named = tmp_path / "named"
    named.mkdir()
    shutil.copyfile(comp.test["path"].iloc[1], named / f"{comp.train['id'].iloc[2]}.png")
    with pytest.raises(UserError, match=f"has the id '{comp.train['id'].iloc[2]}' of the training image.*rename"):
        make_pseudo(cfg, comp, tmp_path / "named.csv", 0.0, False, test=False, images=[str(named)], probs=None)
    with pytest.raises(UserError, match=r"no row reaches --min-confidence 1.0 \(the highest confidence is 0\.\d+"):
        make_pseudo(cfg, comp, tmp_path / "none.csv", 1.0, False, test=True, images=[], probs=None)

    # leak: pseudo rows for training images in a file whose record fits (an older kit's, made without these
    # checks): refused when a student reads it
    leak = tmp_path / "leak.csv"
    make_pseudo(cfg, comp, leak, 0.0, False, test=True, images=[], probs=None)
    df = pd.read_csv(leak, dtype={"id": str})
    df.loc[:1, ["id", "path"]] = comp.train[["id", "path"]].iloc[:2].to_numpy()
    df.to_csv(leak, index=False)
    record_path(leak).write_text(json.dumps({**json.loads(record_path(leak).read_text()),
                                             "csv_sha256": sha256_file(leak)}))
    with pytest.raises(UserError, match="training images.*leak"):
        build_run(student(teacher, "leak", f"data.pseudo={leak}"), 0, resume=False)

    # made by other models than recorded: the file edited (or regenerated) after its record
    df = pd.read_csv(out)
    df.loc[0, "label"] = (df.loc[0, "label"] + 1) % 3
    df.to_csv(out, index=False)
    with pytest.raises(UserError, match="sha256 differs"):
        build_run(student(teacher, "edited", f"data.pseudo={out}"), 0, resume=False)
    rows.to_csv(out, index=False, lineterminator="\n")  # as made again: the record fits
    # ... made on another split
    rec = dict(record, folds_sha256="0" * 64)
    record_path(out).write_text(json.dumps(rec))
    with pytest.raises(UserError, match="another split"):
        build_run(student(teacher, "split", f"data.pseudo={out}"), 0, resume=False)
    # ... by a teacher retrained since
    rec = dict(record, checkpoints={**record["checkpoints"], next(iter(record["checkpoints"])): "f" * 64})
    record_path(out).write_text(json.dumps(rec))
    with pytest.raises(UserError, match="retrained"):
        build_run(student(teacher, "retrained", f"data.pseudo={out}"), 0, resume=False)


def test_demo_splits_off_an_unlabelled_external_pool(tmp_path):
    make_demo(tmp_path / "d", external_share=0.5)
    train = pd.read_csv(tmp_path / "d" / "train.csv")
    ext = pd.read_csv(tmp_path / "d" / "external_solution.csv")
    files = {p.stem for p in (tmp_path / "d" / "external").iterdir()}
    assert files == set(ext["id"]) and not files & set(train["id"])
    assert abs(len(ext) - len(train)) <= 1 and len(files) + len(train) == 1437
    assert not (tmp_path / "d" / "external").joinpath("x").exists()


def test_pseudo_from_saved_test_probabilities(teacher, tmp_path):
    from comp.experiment.oof import prob_frame

    cfg = teacher["cfg"]
    comp = load_competition(cfg)
    ids = comp.test["id"].astype(str).tolist()
    probs = np.tile(np.array([[0.95, 0.03, 0.02], [0.4, 0.3, 0.3]], np.float32), (len(ids), 1))[:len(ids)]
    saved = tmp_path / "test_probs.csv"
    prob_frame(ids, probs, ["0", "1", "2"]).to_csv(saved, index=False)
    rows = make_pseudo(cfg, comp, tmp_path / "p.csv", 0.9, False, test=False, images=[], probs=str(saved))
    assert rows["id"].tolist() == ids[::2] and (rows["label"] == 0).all()  # only the sure rows
    record = json.loads(record_path(tmp_path / "p.csv").read_text())
    assert record["sources"][0]["sha256"] == sha256_file(saved) and record["labels"] == "hard"
    with pytest.raises(UserError, match="no row reaches"):
        make_pseudo(cfg, comp, tmp_path / "q.csv", 0.99, False, test=False, images=[], probs=str(saved))
    with pytest.raises(UserError, match="regression|probability in"):
        make_pseudo(cfg, comp, tmp_path / "q.csv", 1.5, False, test=False, images=[], probs=str(saved))
    prob_frame(["nope"] + ids[1:], probs, ["0", "1", "2"]).to_csv(saved, index=False)
    with pytest.raises(UserError, match="'nope' is not a test image"):
        make_pseudo(cfg, comp, tmp_path / "q.csv", 0.9, False, test=False, images=[], probs=str(saved))


def test_prepare_caches_the_pseudo_labelled_images(teacher, tmp_path, capsys):
    from comp.data.cache import cache_folder, entry_path, image_loader, manifest_key, read_manifest
    from comp.pipeline import prepare

    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):  # external images outside data.root, never seen by the teacher
        cv2.imwrite(str(pool / f"ext_{k}.png"), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    cfg = teacher["cfg"]
    comp = load_competition(cfg)
    out = tmp_path / "p.csv"
    rows = make_pseudo(cfg, comp, out, 0.0, False, test=False, images=[str(pool)], probs=None)
    s = student(teacher, "cached", f"data.pseudo={out}", "images.cache=true")
    prepare(s, workers=0)
    folder = cache_folder(s)
    manifest = read_manifest(folder)
    for p in rows["path"]:
        entry = entry_path(folder, comp.root, p, s.images.cache_format)
        assert entry.is_file() and manifest_key(folder, entry) in manifest, p
    capsys.readouterr()
    load = image_loader(s, comp)
    assert load(rows["path"].iloc[0]).shape == (s.image_size, s.image_size, 3)
    assert "not in the cache" not in capsys.readouterr().err  # read from the cache, not decoded again
    bad = student(teacher, "nopseudo", f"data.pseudo={tmp_path / 'missing.csv'}")
    with pytest.raises(UserError, match="missing.csv.*does not exist"):
        prepare(bad, workers=0)


def test_external_images_repeating_a_name_get_unique_ids(tmp_path):
    """A pool whose subfolders (or formats) repeat a file name: every image kept, each id unique."""
    import cv2
    import numpy as np

    from comp.teacher.pseudo import external_images

    for rel, v in (("pool/a/1.png", 1), ("pool/b/1.png", 2), ("pool/c.png", 3), ("pool/c.jpg", 4)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), np.full((8, 8), v, np.uint8))
    df = external_images([str(tmp_path / "pool")])
    assert sorted(df["id"]) == ["a/1.png", "b/1.png", "pool/c.jpg", "pool/c.png"] and len(set(df["path"])) == 4


def test_external_images_in_an_hdf5_store(tmp_path):
    """An unlabelled pool shipped as an HDF5 image store (ISIC 2024's form): its keys are the ids, the paths
    `<store>/<key>`, readable by the kit's reader."""
    import numpy as np
    from replicas import jpeg_bytes, write_store

    from comp.data.readers import read_image
    from comp.teacher.pseudo import external_images

    store = tmp_path / "extra-image.hdf5"
    write_store(store, {f"ISIC_{i}": jpeg_bytes(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)})
    df = external_images([str(store)])
    assert sorted(df["id"]) == ["ISIC_0", "ISIC_1", "ISIC_2"]
    assert read_image(df["path"].iloc[0]).shape == (16, 16, 3)


def test_multihead_confidence_and_hard_rows_per_head():
    from comp.tasks import Task
    from comp.teacher.pseudo import label_rows

    task = Task("multihead", ["b_h", "b_i", "l_h", "l_l", "l_x"], "multihead", heads=[["b", 2], ["l", 3]])
    out = np.array([[0.9, 0.1, 0.2, 0.7, 0.1], [0.6, 0.4, 0.1, 0.1, 0.8]])
    df = label_rows(task, ["a", "b"], ["a.png", "b.png"], out, 0.65, soft=False)
    assert list(df["id"]) == ["a"]  # b's least sure head (bowel, 0.6) is below 0.65
    assert df.filter(like="prob_").to_numpy().tolist() == [[1, 0, 0, 1, 0]]  # each head's argmax, one-hot


# --- MIL rows (mil.source set) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mil_fold(tmp_path_factory):
    from mil_fold import trained_mil_fold

    return trained_mil_fold(tmp_path_factory)


def test_mil_test_rows_are_pseudo_labelled_and_trained_on_external_images_refused(mil_fold, tmp_path):
    """A MIL experiment pseudo-labels its test rows (folders of series; no byte comparison of single files)
    and a student trains on them; external --images (single images) are refused in one line."""
    csv = tmp_path / "pseudo.csv"
    code, _, err = run_main("pseudo.py", "--config", mil_fold["config"], "--out", str(csv), "--test",
                            *mil_fold["overrides"])
    assert code == 0, err[-3000:]
    rows = pd.read_csv(csv, dtype=str)
    assert len(rows) == 2 and all(Path(p).is_dir() for p in rows["path"])
    from mil_fold import train_student

    train_student(mil_fold, tmp_path, f"data.pseudo={csv}")
    code, _, err = run_main("pseudo.py", "--config", mil_fold["config"], "--out", str(tmp_path / "x.csv"),
                            *mil_fold["overrides"], "--images", str(mil_fold["root"] / "test"))
    one_error(code, err, "--images", "mil.source=study")
