"""Pseudo-labels (data.pseudo, scripts/pseudo.py) and knowledge distillation (distill.teacher), and their
leak rules: a leaking setup is refused, a pseudo-label file made by other models than it records is caught,
and student fold K learns from teacher fold K's model only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from comp.data.competition import load_competition
from comp.data.download import make_demo
from comp.errors import UserError
from comp.experiment import load_config
from comp.io import sha256_file
from comp.tasks import Task
from comp.teacher.distill import Distiller
from comp.teacher.pseudo import make_pseudo
from comp.teacher.pseudo_rows import record_path
from comp.train.build import build_run
from comp.train.loop import fit

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4", "train.tracker=none"]


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny competition with a two-fold teacher experiment trained on it (1 epoch per fold)."""
    from helpers import FAST, write_tiny_competition

    tmp = tmp_path_factory.mktemp("teacher")
    root = write_tiny_competition(tmp / "data")
    tiny = {"root": root, "overrides": FAST + [f"data.root={root}", "data.source=competition",
                                                "data.solution_csv=solution.csv", "aug.tta=[identity]"]}
    cfg = config(tiny, f"out_dir={tmp / 'teacher'}")
    for k in range(2):
        fit(cfg, k)
    return {"tiny": tiny, "cfg": cfg, "out": tmp / "teacher", "tmp": tmp}


def student(teacher, name: str, *extra: str):
    out = teacher["tmp"] / name
    out.mkdir(exist_ok=True)
    shutil.copy(teacher["out"] / "folds.csv", out / "folds.csv")  # the teacher's split
    return config(teacher["tiny"], f"out_dir={out}", *extra)


def test_student_fold_learns_from_the_same_teacher_fold_only(teacher, tmp_path):
    # a copy of the teacher whose fold 1 model is unreadable: student fold 0 must never open it
    t = tmp_path / "t"
    shutil.copytree(teacher["out"], t)
    (t / "fold1" / "best.pt").write_bytes(b"not a checkpoint")
    cfg = student(teacher, "s_fold0", f"distill.teacher={t}", "distill.alpha=0.3", "distill.temperature=3")
    run = build_run(cfg, 0, resume=False)
    assert list(run.meta["distill"]["teachers"]) == [str(t / "fold0" / "best.pt")]
    ids = run.data.train_set.paths
    valid = set(run.data.valid_set.paths)
    assert not valid & set(ids)  # no validation image gets a soft target
    packed = run.data.train_set.labels
    assert packed.shape == (len(ids), 1 + 3) and packed.dtype == np.float32
    with pytest.raises(UserError, match="fold1"):  # fold 1 needs teacher fold 1: refused, not swapped
        build_run(student(teacher, "s_fold1", f"distill.teacher={t}"), 1, resume=False)
    res = fit(student(teacher, "s_fit", f"distill.teacher={teacher['out']}"), 0)
    assert np.isfinite(res["best"])


def test_alpha_one_trains_exactly_the_plain_student(teacher):
    """distill.alpha=1 puts all weight on the hard labels: the run must be bit-identical to one without a
    teacher (the teacher's forward passes, the packed targets and their split change nothing else). This is
    what settled issue 19's question: the distilled demo student scored lower because of its schedule, not
    of a misaligned or perturbed pipeline."""
    plain = fit(student(teacher, "plain"), 0)
    taught = fit(student(teacher, "alpha1", f"distill.teacher={teacher['out']}", "distill.alpha=1"), 0)
    a, b = (torch.load(r["dir"] / "last.pt", weights_only=True) for r in (plain, taught))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = (pd.read_csv(r["dir"] / "metrics.csv").drop(columns=["seconds", "images_per_s", "data_wait_share"],
                                                          errors="ignore") for r in (plain, taught))
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)


def test_resume_with_a_retrained_teacher_is_refused(teacher, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(teacher["out"], t)
    fit(student(teacher, "s_resume", f"distill.teacher={t}"), 0)
    ck = torch.load(t / "fold0" / "best.pt", weights_only=True)  # "retrained": other weights, same file
    ck["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, t / "fold0" / "best.pt")
    with pytest.raises(UserError, match="learnt from the teacher checkpoints.*retrained"):
        build_run(student(teacher, "s_resume", f"distill.teacher={t}", "epochs=2"), 0, resume=True)


def test_teacher_on_another_split_is_refused(teacher, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(teacher["out"], t)
    folds = pd.read_csv(t / "folds.csv", dtype={"id": str})
    folds.loc[0, "fold"] = 1 - folds.loc[0, "fold"]
    folds.to_csv(t / "folds.csv", index=False)
    with pytest.raises(UserError, match="another split"):
        build_run(student(teacher, "s_split", f"distill.teacher={t}"), 0, resume=False)
    with pytest.raises(UserError, match="mixup"):
        build_run(student(teacher, "s_mix", f"distill.teacher={teacher['out']}", "train.mixup=0.4"), 0, False)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression"])
def test_distillation_loss_for_every_head(kind):
    torch.manual_seed(0)
    task = {"multiclass": Task("multiclass", ["a", "b", "c"], "softmax"),
            "binary": Task("binary", ["n", "p"], "sigmoid"),
            "multilabel": Task("multilabel", ["x", "y"], "sigmoid"),
            "regression": Task("regression", ["v"], "regression", mean=2.0, std=3.0)}[kind]
    logits = torch.randn(5, task.num_logits, requires_grad=True)
    hard = {"multiclass": torch.tensor([0, 1, 2, 0, 1]), "binary": torch.tensor([0, 1, 1, 0, 1]),
            "multilabel": torch.randint(0, 2, (5, 2)).float(), "regression": torch.randn(5)}[kind]
    teacher = torch.randn(5, task.num_logits)
    if kind == "regression":
        teacher = teacher * 3 + 2  # a value
    y = torch.cat([hard.reshape(5, -1).float(), teacher], 1)
    d = Distiller(1.0, 2.0, 1 if hard.ndim == 1 else hard.shape[1], not hard.is_floating_point(), hard.ndim == 1)
    assert torch.allclose(d.loss(task, logits, y, None, 0.0), task.loss(logits, hard))  # alpha 1: hard only
    d.alpha = 0.0
    # the soft loss is smallest where the student's outputs are the teacher's: zero gradient there
    same = (teacher - 2) / 3 if kind == "regression" else teacher.clone()
    same.requires_grad_(True)
    d.loss(task, same, y, None, 0.0).backward()
    assert same.grad.abs().max() < 1e-5
    d.loss(task, logits, y, None, 0.0).backward()
    assert logits.grad.abs().max() > 1e-4


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
