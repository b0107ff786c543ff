"""Multi-stage recipes (stages: comp.train.stages) and the external training data they pretrain on (data.extra:
comp.data.extra, as training uses it in comp.train.build.fold_data), on the tiny competition of conftest with a
DR-2015-like external source.

External data: every fold trains on all the extra rows and validates on none, the OOF holds none, the sources
are counted; a bad entry, a label outside the map, an id clash and byte-identical copies of competition images
are refused or left out. Stages: weights handed on from stage to stage, a stage resumed and the finished ones
skipped, a bad stage refused when the config loads, every stage's extra images cached by prepare."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import one_error, run_main

import comp
from comp.data.competition import load_competition
from comp.data.extra import load_extra
from comp.errors import UserError
from comp.experiment import Experiment, load_config


def write_external(root: Path, n_per_level: int = 4, levels=(10, 11, 12), prefix: str = "dr") -> Path:
    """A DR-2015-like download: trainLabels.csv (image, level), images in train/ as .jpeg."""
    rng = np.random.default_rng(1)
    (root / "train").mkdir(parents=True)
    rows = []
    for li, lev in enumerate(levels):
        for k in range(n_per_level):
            img = np.clip(rng.normal(60 + 70 * li, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            name = f"{prefix}_{lev}_{k}"
            cv2.imwrite(str(root / "train" / f"{name}.jpeg"), img)
            rows.append((name, lev))
    pd.DataFrame(rows, columns=["image", "level"]).to_csv(root / "trainLabels.csv", index=False)
    return root


def extra_entry(root: Path, **kw) -> str:
    e = {"name": "dr", "root": str(root), "train_csv": "trainLabels.csv", "id_column": "image",
         "label_column": "level", "image_ext": ".jpeg", "label_map": {10: 0, 11: 1, 12: 2}, **kw}
    return "data.extra=[" + yaml.safe_dump(e, default_flow_style=True).strip() + "]"


@pytest.fixture
def ext(tiny, tmp_path):
    return write_external(tmp_path / "dr")


def test_every_fold_trains_on_all_extra_rows_and_validates_on_none(tiny, ext):
    from comp.data.folds import load_or_make_folds
    from comp.train.build import fold_data

    cfg = load_config(None, tiny["overrides"] + [extra_entry(ext)])
    competition = load_competition(cfg)
    extra = load_extra(cfg, competition)
    assert len(extra) == 12 and set(extra["source"]) == {"dr"}
    # the label map: level 10/11/12 -> class 0/1/2 (ids say their level)
    want = extra["id"].str.split("_").str[1].astype(int) - 10
    assert (extra["label"].to_numpy() == want.to_numpy()).all()
    folds = load_or_make_folds(cfg, competition.train, Experiment(cfg, Path(cfg.out_dir)).split)
    assert not folds["id"].isin(extra["id"]).any()  # never in folds.csv
    for k in range(2):
        fd = fold_data(cfg, competition, folds, k, 0, 1, pin=False, extra=extra)
        own = folds[folds["fold"] != k]
        assert fd.train_set.paths == own["path"].tolist() + extra["path"].tolist()
        assert fd.train_set.labels.tolist() == own["label"].tolist() + extra["label"].tolist()
        assert not set(fd.valid_ids) & set(extra["id"])
        assert fd.valid_ids == folds[folds["fold"] == k]["id"].tolist()


def test_fit_oof_has_no_extra_image_and_sources_are_counted(tiny, ext):
    from comp.train import fit

    cfg = load_config(None, tiny["overrides"] + [extra_entry(ext, weight=2.0)])
    res = fit(cfg, 0)
    oof = pd.read_csv(res["dir"] / "oof.csv", dtype={"id": str})
    assert not oof["id"].str.startswith("dr_").any() and len(oof) == 15
    src = yaml.safe_load((res["dir"] / "sources.json").read_text())
    assert src["train_images"] == {"competition": 15, "dr": 12} and src["valid_images"] == 15
    assert src["sampling_weights"] == {"competition": 1.0, "dr": 2.0}


def test_unknown_label_after_mapping_is_refused_naming_source_and_row(tiny, ext):
    cfg = load_config(None, tiny["overrides"] + [extra_entry(ext, label_map={10: 0, 11: 1})])
    with pytest.raises(UserError) as e:
        load_extra(cfg, load_competition(cfg))
    msg = str(e.value)
    assert "data.extra[0] ('dr')" in msg and "trainLabels.csv: row 10" in msg and "'12'" in msg, msg


def test_id_clash_with_a_competition_image_is_refused(tiny, tmp_path):
    clash = write_external(tmp_path / "clash", levels=(0,), prefix="img_0")  # img_0_0_0.. no clash
    (clash / "train" / "img_0_0_0.jpeg").rename(clash / "train" / "img_0_000.jpeg")
    t = pd.read_csv(clash / "trainLabels.csv")
    t.loc[0, "image"] = "img_0_000"
    t.to_csv(clash / "trainLabels.csv", index=False)
    cfg = load_config(None, tiny["overrides"] + [extra_entry(clash, label_map={})])
    with pytest.raises(UserError) as e:
        load_extra(cfg, load_competition(cfg))
    msg = str(e.value)
    assert "'img_0_000'" in msg and "img_0_000.jpeg" in msg and "img_0_000.png" in msg and "\n" not in msg


def test_copies_of_competition_images_are_left_out_with_a_warning(tiny, ext, capsys):
    cfg = load_config(None, tiny["overrides"] + [extra_entry(ext)])
    competition = load_competition(cfg)
    assert len(load_extra(cfg, competition)) == 12
    victim = ext / "train" / "dr_11_2.jpeg"  # its bytes replaced by a competition training image's
    shutil.copyfile(competition.train["path"].iloc[3], victim)
    capsys.readouterr()
    rows = load_extra(cfg, competition)
    assert len(rows) == 11 and str(victim) not in set(rows["path"])
    err = capsys.readouterr().err
    assert "1 image(s) are byte-identical copies" in err and str(victim) in err
    assert competition.train["path"].iloc[3] in err


def test_bad_entry_keys_are_refused_by_the_config(tiny, ext):
    for bad, key in ((dict(stage="later"), "data.extra[0].stage"), (dict(weight=0), "data.extra[0].weight"),
                     (dict(labels="x"), "'labels' in data.extra[0]")):
        with pytest.raises(UserError, match=re.escape(key)):
            comp.load_config(None, tiny["overrides"] + [extra_entry(ext, **bad)])


# --- stages -------------------------------------------------------------------------------------------------

STAGES = "stages=[{image_size: 24, data: {extra_only: true}}, {epochs: 2}]"


def test_two_stages_hand_on_weights_resume_and_predict(tiny, ext, monkeypatch):
    import comp.train.build as build
    from comp.models.weights import read_state_dict
    from comp.train import fit
    from comp.train.loop import Stopped
    from comp.train.stages import train_stages

    cfg = load_config(None, tiny["overrides"] + [extra_entry(ext, stage="pretrain"), STAGES])
    created = []
    real = build.create_model

    def spy(*a, **kw):
        m = real(*a, **kw)
        created.append((kw.get("pretrained"), {k: v.clone() for k, v in m.state_dict().items()}))
        return m

    monkeypatch.setattr(build, "create_model", spy)
    calls = []

    def kill_in_stage2(c, fold, resume=False):
        calls.append((int(c.stage), resume))

        def stop(epoch, score):
            if c.stage == 0 and epoch == 0:
                raise Stopped(15, Path("last.pt"))
        return fit(c, fold, resume=resume, on_epoch=stop)

    with pytest.raises(Stopped):
        train_stages(cfg, 0, False, kill_in_stage2)
    fold = Path(cfg.out_dir) / "fold0"
    s1 = fold / "stage1"
    assert (s1 / "done.json").is_file() and (fold / "last.pt").is_file()
    src1 = yaml.safe_load((s1 / "sources.json").read_text())["train_images"]
    assert src1 == {"competition": 0, "dr": 12}  # stage 1: the extra data only
    assert yaml.safe_load((fold / "sources.json").read_text())["train_images"] == {"competition": 15}
    saved1 = yaml.safe_load((s1 / "config.yaml").read_text())
    assert saved1["image_size"] == 24 and saved1["stage"] == 1
    # stage 2 started from stage 1's best.pt
    pre, weights = created[1]
    assert pre == str(s1 / "best.pt")
    sd = read_state_dict(s1 / "best.pt")
    for k, v in sd.items():
        assert torch.equal(weights[k], v), k
    mtime = (s1 / "best.pt").stat().st_mtime_ns
    calls.clear()

    def fit_plain(c, f, resume=False):
        calls.append((int(c.stage), resume))
        return fit(c, f, resume=resume)

    res = train_stages(cfg, 0, True, fit_plain)
    assert calls == [(0, True)]  # stage 1 not redone, stage 2 resumed
    assert (s1 / "best.pt").stat().st_mtime_ns == mtime
    assert len(pd.read_csv(fold / "metrics.csv")) == 2 and res["dir"] == fold
    saved2 = yaml.safe_load((fold / "config.yaml").read_text())
    assert saved2["model"]["pretrained"] == str(s1 / "best.pt") and saved2["image_size"] == 16
    monkeypatch.undo()
    code, out, err = run_main("predict.py", *tiny["overrides"], extra_entry(ext, stage="pretrain"), STAGES,
                              "predict.folds=[0]", "--quiet")
    assert code == 0, err
    assert len(pd.read_csv(io.StringIO(out))) == 9


def test_a_bad_stage_is_refused_when_the_config_loads(tiny):
    # the one loader checks every stage as a whole config: a stage the script would refuse hours later (its
    # TTA view, a range, a key prediction reads) fails at load, for a notebook and a script alike
    for stages, needle in (("[{}, {image_size: 32}]", "stages[1] (the last stage) sets 'image_size'"),
                           ("[{out_dir: x}, {}]", "stages[0] sets 'out_dir'"),
                           ("[{epochz: 1}, {}]", "stages[0]"),
                           ("[{epochs: 0}, {}]", "stages[0]: bad value for config key 'epochs': 0 must be >= 1"),
                           ("[{aug: {tta: [idnetity]}}, {}]", "stages[0]: aug.tta: unknown view 'idnetity'")):
        with pytest.raises(UserError, match=re.escape(needle)):
            load_config(None, tiny["overrides"] + [f"stages={stages}"])


def test_prepare_caches_the_extra_images_of_every_stage(tiny, ext):
    from comp.data.cache import cache_folder, read_manifest
    from comp.experiment import stage_configs

    over = tiny["overrides"] + [extra_entry(ext, stage="pretrain"), STAGES]
    code, _, err = run_main("prepare.py", *over, "--quiet")
    assert code == 0, err
    cfg = load_config(None, over)
    for c in stage_configs(cfg):
        keys = read_manifest(cache_folder(c))
        assert len(keys) == 15 * 2 + 9 + 12, (c.image_size, len(keys))  # train, test and the 12 extra images
    folds = pd.read_csv(tiny["out"] / "folds.csv", dtype={"id": str})
    assert len(folds) == 30 and not folds["id"].str.startswith("dr_").any()


def test_train_fold_runs_the_stages_and_resume_skips_the_finished_ones(tiny, ext):
    over = ["--fold", "1", *tiny["overrides"], extra_entry(ext, stage="pretrain"), "stages=[{image_size: 24}, {}]"]
    code, _, err = run_main("train_fold.py", *over)
    assert code == 0, err
    fold = tiny["out"] / "fold1"
    assert (fold / "stage1" / "done.json").is_file() and (fold / "best.pt").is_file()
    assert (fold / "oof.csv").is_file() and not (fold / "stage1" / "stage1").exists()
    code, _, err = run_main("train_fold.py", *over)  # without --resume: the trained stage is not overwritten
    one_error(code, err, "fold1 already holds a trained fold", "--resume")
    code, _, err = run_main("train_fold.py", *over, "--resume")
    assert code == 0, err
    assert "stage 1/2: done" in err and "nothing left to train" in err, err
