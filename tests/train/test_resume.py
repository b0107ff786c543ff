"""--resume in-process (comp.train.build.build_run, comp.train.state.restore): another model refused, harmless
changes reported, early stop and the learning rate kept across a resume, a bad checkpoint refused (never a
silent start over), a torn recovery.pt beside a good last.pt, a checkpoint of two processes resumed in one.
Killed and signalled runs: test_interrupt.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from faults import BAD_CHECKPOINTS
from helpers import copy_of, one_error, run_main, snapshot, trained_fixture

from comp.errors import UserError
from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config
from comp.train.build import build_run
from comp.train.loop import fit
from comp.train.optim import lr_at

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4"]  # 15 training images: 3 steps per epoch
RESUME = ("train_fold.py", "--fold", "0", "--resume")


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


def files(fold: Path, suffixes=(".pt", ".csv", ".yaml")) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(fold.iterdir()) if p.suffix in suffixes}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "train_resume")  # timm/test_resnet, one epoch of fold 0


@pytest.fixture(scope="module")
def two_class(tmp_path_factory) -> dict:
    """The same config on a two-class competition: its folds carry the very same config hash."""
    return trained_fixture(tmp_path_factory, "ckpt_two_class", classes=(0, 1))


@pytest.fixture
def ex(trained, tmp_path) -> dict:
    return copy_of(trained, tmp_path / "ex")


def test_resume_refuses_another_model_and_reports_harmless_changes(ex, capsys):
    fold = ex["fold"]
    before = files(fold)

    def cfg(*extra):
        return load_config(None, [*ex["overrides"], *extra])

    with pytest.raises(UserError, match=r"model\.name 'timm/test_resnet' -> 'timm/test_efficientnet'"):
        fit(cfg("model.name=timm/test_efficientnet"), 0, resume=True)
    with pytest.raises(UserError, match=r"image_size"):
        fit(cfg("image_size=24"), 0, resume=True)
    assert files(fold) == before  # nothing overwritten, config.yaml included

    capsys.readouterr()
    fit(cfg("epochs=2", "train.log_every=3"), 0, resume=True)
    err = capsys.readouterr().err
    assert "epochs 1 -> 2" in err and "train.log_every 10 -> 3" in err
    assert list(pd.read_csv(fold / "metrics.csv")["epoch"]) == [0, 1]

    last = (fold / "last.pt").read_bytes()
    fit(cfg("epochs=2"), 0, resume=True)  # complete: nothing to do
    assert "nothing left to train" in capsys.readouterr().err and (fold / "last.pt").read_bytes() == last

    with pytest.raises(UserError, match="already holds a trained fold"):
        fit(cfg("epochs=2"), 0)


def test_early_stop_is_kept_across_resume(tiny):
    # a frozen backbone and a head at lr 1e-9: the accuracy of epoch 0 is never beaten
    cfg = config(tiny, "epochs=6", "train.early_stop=2", "optim.lr=1e-9", "optim.min_lr=0", "model.freeze_epochs=6")
    fit(cfg, 0)
    fold = tiny["out"] / "fold0"
    assert list(pd.read_csv(fold / "metrics.csv")["epoch"]) == [0, 1, 2]
    ck = ckpt_io.load(fold / "last.pt")
    assert ck["bad_epochs"] == 2 and ck["epoch"] == 3
    fit(cfg, 0, resume=True)
    assert len(pd.read_csv(fold / "metrics.csv")) == 3


def test_lr_follows_progress_across_a_resume_that_changes_the_steps_per_epoch(tiny):
    # 2 of 4 epochs at batch 4 (3 steps per epoch), then resumed at batch 2 (7 steps per epoch): the lr must
    # be the one an uninterrupted batch-2 run has at the same progress (epoch 2 of 4: half the cosine), not
    # the one a scheduler object's step count (6 steps of 28) would give.
    fit(config(tiny, "epochs=2", "optim.warmup_epochs=0", "model.backbone_lr_mult=0.1"), 0)
    cfg = config(tiny, "epochs=4", "batch_size=2", "optim.warmup_epochs=0", "model.backbone_lr_mult=0.1")
    run = build_run(cfg, 0, resume=True)
    spe = run.steps_per_epoch
    assert spe == 7 and run.state["epoch"] == 2 and run.state["step"] == 0
    fresh = build_run(load_config(None, tiny["overrides"] + SMALL + [
        "epochs=4", "batch_size=2", "optim.warmup_epochs=0", "model.backbone_lr_mult=0.1",
        f"out_dir={tiny['out'] / 'fresh'}"]), 0, resume=False)
    fresh.state.update(epoch=2, step=0)
    fresh.set_lr()
    assert run.lr == fresh.lr == pytest.approx(cfg.optim.lr * lr_at(cfg, 2 * spe, spe))
    assert lr_at(cfg, 2 * spe, spe) == pytest.approx(0.5 * (1 + cfg.optim.min_lr / cfg.optim.lr))  # half-way
    # lr_mult is live: the backbone's groups run at a tenth of the head's
    for g in run.optimizer.param_groups:
        assert g["lr"] == pytest.approx(run.lr * g["lr_mult"]) and g["lr_mult"] in (1.0, 0.1)
    assert {g["lr_mult"] for g in run.optimizer.param_groups} == {1.0, 0.1}


# --- a bad last.pt: refused with one `error:` line naming it, nothing overwritten, never started over ------

@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_resume_refuses_a_bad_checkpoint_and_never_starts_over(name, ex, two_class, tmp_path):
    ctx = {"two_class": two_class, "marker": tmp_path / "PWNED"}
    fault, extra, needles = BAD_CHECKPOINTS[name]
    fault(ex["fold"] / "last.pt", ctx)
    before = snapshot(ex["base"])
    code, out, err = run_main(*RESUME, *ex["overrides"], "epochs=2", *extra)
    line = one_error(code, err, *needles)
    assert "last.pt" in line
    assert snapshot(ex["base"]) == before  # best.pt, metrics.csv, config.yaml... as they were
    assert not ctx["marker"].exists()  # the pickled code never ran


def test_a_torn_recovery_beside_a_good_last_resumes_from_last(ex):
    (ex["fold"] / "recovery.pt").write_bytes((ex["fold"] / "last.pt").read_bytes()[:1000])
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    assert code == 0, err
    assert "resumed from" in err and "last.pt: epoch 1" in err
    assert not (ex["fold"] / "recovery.pt").exists()  # older than the new last.pt: cleared


def test_a_checkpoint_of_two_processes_resumes_in_one_at_an_epoch_boundary(ex):
    last = ex["fold"] / "last.pt"
    ck = ckpt_io.load(last)
    other = ckpt_io.rng_state()
    other["torch"] = torch.Generator().manual_seed(7).get_state()
    ck.update(rng=[ck["rng"][0], other], world_size=2)
    ckpt_io.save(ck, last)
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    assert code == 0, err[-2000:]
    assert "not restored" in err and "2 processes, now 1" in err
    assert ckpt_io.load(last)["epoch"] == 2
