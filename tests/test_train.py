"""The training loop in-process on a tiny competition: frozen-backbone warm-up, schedules, non-finite
losses, resume refusals and reports, checkpoint files."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from comp.errors import UserError
from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config
from comp.report.plots import fold_figures
from comp.train.build import build_run
from comp.train.loop import fit, train_one_epoch
from comp.train.optim import lr_at

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4"]  # 15 training images: 3 steps per epoch


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


def snapshot(fold: Path, suffixes=(".pt", ".csv", ".yaml")) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(fold.iterdir()) if p.suffix in suffixes}


def test_frozen_warmup_trains_only_the_head(tiny):
    run = build_run(config(tiny, "model.freeze_epochs=1", "epochs=2", "optim.warmup_epochs=0"), 0, resume=False)
    head = {n for n, _ in run.raw.named_parameters() if n.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    before = copy.deepcopy(run.raw.state_dict())

    train_one_epoch(run, 0)  # frozen
    after = run.raw.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == head  # no backbone weight, BN statistic or BN step counter moved
    assert all(p not in run.optimizer.state for n, p in run.raw.named_parameters() if n not in head)

    mid = copy.deepcopy(after)
    train_one_epoch(run, 1)  # unfrozen: everything trains, BN statistics follow the batches again
    after = run.raw.state_dict()
    assert all(not torch.equal(mid[k], after[k]) for k in after if k.endswith(("weight", "running_mean")))


def test_lr_schedules(tiny):
    cfg = config(tiny, "epochs=10", "optim.lr=0.1", "optim.min_lr=0.001", "optim.warmup_epochs=2")
    def f(s):
        return lr_at(cfg, s, steps_per_epoch=10)  # warmup 20 steps, 100 in all

    assert f(0) == pytest.approx(0.01) and f(10) == pytest.approx(0.505) and f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5) and f(100) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(20, 100))
    cfg_one = config(tiny, "epochs=10", "optim.schedule=onecycle")

    def one(s):
        return lr_at(cfg_one, s, 10)

    assert one(0) == pytest.approx(0.04) and one(30) == pytest.approx(1.0) and one(100) < 0.01
    cfg_const = config(tiny, "epochs=10", "optim.schedule=constant", "optim.warmup_epochs=0")
    assert lr_at(cfg_const, 0, 10) == lr_at(cfg_const, 99, 10) == 1.0


def test_outputs_and_sgd_accumulation_clipping(tiny):
    cfg = config(tiny, "epochs=2", "optim.name=sgd", "train.accum_steps=2", "batch_size=2", "train.clip_grad=1.0",
                 "train.label_smoothing=0.1", "train.sampler=weighted", "train.class_weights=true", "metric=f1_macro")
    result = fit(cfg, 0)
    fold = result["dir"]
    fold_figures(result["files"], result["metric"])  # what comp.train_fold draws after fit
    assert {"config.yaml", "last.pt", "best.pt", "metrics.csv", "oof.csv", "curves.png", "confusion.png"} <= {
        p.name for p in fold.iterdir()}
    m = pd.read_csv(fold / "metrics.csv")
    assert list(m["epoch"]) == [0, 1]
    assert {"train_loss", "valid_loss", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "qwk", "auc",
            "lr", "seconds", "images_per_s"} <= set(m.columns)
    best = torch.load(fold / "best.pt", weights_only=True)
    assert best["epoch"] - 1 == m["f1_macro"].idxmax() and result["best"] == m["f1_macro"].max()
    assert "optimizer" not in best  # best.pt is slim (comp.train.state.best_checkpoint); last.pt resumes
    last = torch.load(fold / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_resume_refuses_another_model_and_reports_harmless_changes(tiny, capsys):
    fit(config(tiny), 0)
    fold = tiny["out"] / "fold0"
    before = snapshot(fold)
    with pytest.raises(UserError, match=r"model\.name 'timm/test_efficientnet' -> 'timm/test_resnet'"):
        fit(config(tiny, "model.name=timm/test_resnet"), 0, resume=True)
    with pytest.raises(UserError, match=r"image_size"):
        fit(config(tiny, "image_size=24"), 0, resume=True)
    assert snapshot(fold) == before  # nothing overwritten, config.yaml included

    capsys.readouterr()
    fit(config(tiny, "epochs=2", "train.log_every=3"), 0, resume=True)
    err = capsys.readouterr().err
    assert "epochs 1 -> 2" in err and "train.log_every 10 -> 3" in err
    assert list(pd.read_csv(fold / "metrics.csv")["epoch"]) == [0, 1]

    last = (fold / "last.pt").read_bytes()
    fit(config(tiny, "epochs=2"), 0, resume=True)  # complete: nothing to do
    assert "nothing left to train" in capsys.readouterr().err and (fold / "last.pt").read_bytes() == last

    with pytest.raises(UserError, match="already holds a trained fold"):
        fit(config(tiny, "epochs=2"), 0)


def test_nonfinite_loss_stops_with_checkpoints_intact(tiny):
    fit(config(tiny), 0)
    fold = tiny["out"] / "fold0"
    before = snapshot(fold, (".pt", ".csv"))  # config.yaml holds the settings of the latest attempt
    with pytest.raises(UserError, match=r"(loss is (nan|inf)|weight .* is not finite) at epoch 1 step \d") as e:
        fit(config(tiny, "epochs=3", "optim.lr=1e30"), 0, resume=True)
    assert "intact" in str(e.value) and "\n" not in str(e.value)
    assert snapshot(fold, (".pt", ".csv")) == before and not (fold / "recovery.pt").exists()


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


def test_checkpoint_writes_are_atomic_and_loads_safe(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.save({"model": {"w": torch.ones(3)}, "epoch": 1, "step": 0}, path)
    good = path.read_bytes()

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(UserError, match="No space left"):
        ckpt_io.save({"model": {}, "epoch": 2, "step": 0}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    (tmp_path / "recovery.pt").write_bytes(good[: len(good) // 2])  # a torn file: skipped, not fatal
    assert ckpt_io.newest([tmp_path / "recovery.pt", path])[0] == path
    torch.save({"model": {}, "hook": print}, tmp_path / "evil.pt")  # code: refused, never run
    with pytest.raises(UserError, match="weights_only"):
        ckpt_io.load(tmp_path / "evil.pt")

    # RNG states survive the weights_only round trip
    ckpt_io.save({"model": {}, "rng": ckpt_io.rng_state()}, tmp_path / "rng.pt")
    expect = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    ckpt_io.set_rng_state(ckpt_io.load(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(expect[0], got[0]) and expect[1:] == got[1:]


def test_worker_processes_change_nothing(tiny):
    # The loader's workers live for the whole fold and start the next epoch's batches during validation;
    # the order and augmentations are functions of (seed, epoch, position), so two workers must give the
    # very same weights and losses as loading in the main process.
    aug = "aug.train=[{name: HorizontalFlip, p: 0.5}, {name: Affine, rotate: [-20, 20], p: 0.7}]"
    runs = {}
    for workers in (0, 2):
        cfg = load_config(None, tiny["overrides"] + SMALL + [aug, "epochs=3", f"num_workers={workers}",
                                                              f"out_dir={tiny['out'] / f'w{workers}'}"])
        runs[workers] = fit(cfg, 0)["dir"]
    a, b = (torch.load(d / "last.pt", weights_only=True)["model"] for d in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    cols = ["epoch", "train_loss", "valid_loss"]
    ma, mb = (pd.read_csv(d / "metrics.csv")[cols] for d in runs.values())
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)


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


def test_fused_optimizer_on_cuda_and_foreach_ema(tiny, monkeypatch):
    from comp.train.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model.get_classifier = lambda: model[0]
    for name in ("adamw", "sgd"):
        cfg = config(tiny, f"optim.name={name}")
        assert build_optimizer(cfg, model, torch.device("cuda")).defaults["fused"] is True  # one kernel per step
        assert not build_optimizer(cfg, model, torch.device("cpu")).defaults.get("fused")
    # the EMA takes timm's multi-tensor path: one torch._foreach_lerp_ per optimizer step
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = build_run(config(tiny, "train.ema=true"), 0, resume=False)
    assert run.ema.foreach
    train_one_epoch(run, 0)
    assert len(calls) == run.steps_per_epoch


def test_every_loss_option_takes_effect_with_mixup(tiny):
    # mixup/cutmix replace the hard labels by soft targets, and the loss by its soft-target form: class weights
    # and label smoothing must still act (issue 13 item 3: the class weights were silently dropped).
    from types import SimpleNamespace

    from comp.train.loop import _forward_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    hard = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([0.5, 1.0, 3.0])
    from comp.tasks import Task, mix_matrix

    run = SimpleNamespace(model=lambda x: x, device=torch.device("cpu"), amp_dtype=None, mixup=object(),
                          loss_weight=w, cfg=SimpleNamespace(train=SimpleNamespace(label_smoothing=0.0)),
                          task=Task("multiclass", ["a", "b", "c"], "softmax"))
    soft = torch.nn.functional.one_hot(hard, 3).float()
    weighted = _forward_loss(run, logits, soft)
    assert torch.allclose(weighted, torch.nn.functional.cross_entropy(logits, hard, weight=w))  # one-hot: exact
    run.loss_weight = None
    assert not torch.allclose(_forward_loss(run, logits, soft), weighted)  # the weights took effect
    # the soft targets the run's mixing makes carry the label smoothing and the class count (comp.tasks.mix_matrix)
    built = build_run(config(tiny, "train.mixup=0.4", "train.label_smoothing=0.2", "train.class_weights=true"), 0,
                      resume=False)
    assert built.loss_weight is not None and built.mixup.num_classes == built.cfg.batch_size
    x = torch.zeros(built.cfg.batch_size, 3, 4, 4)
    y = torch.arange(built.cfg.batch_size) % 3
    _, m = mix_matrix(built.mixup, x)
    mixed = m @ built.task.dense(y, 0.2)
    assert mixed.shape == (built.cfg.batch_size, 3) and torch.allclose(mixed.sum(1), torch.ones(len(y)))
    assert mixed.min() >= 0.2 / 3 - 1e-6  # smoothing: no class below s/C


def test_the_model_defines_its_input_normalisation(tiny):
    # timm's test_resnet was pretrained with mean = std = 0.5, the kit's ResNets with ImageNet's: each run
    # normalises with its model's own values, saves them in the checkpoint, and prediction reads them back.
    from comp.experiment import Experiment
    from comp.experiment.model import _saved_inputs

    run = build_run(config(tiny, "model.name=timm/test_resnet"), 0, resume=False)
    assert run.norm == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert build_run(config(tiny, "model.name=resnet18", f"out_dir={tiny['out'] / 'r'}"), 0,
                     resume=False).norm == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    fit(config(tiny, "model.name=timm/test_resnet"), 0)
    model = Experiment(config(tiny, "model.name=timm/test_resnet")).load_model(tiny["out"] / "fold0" / "best.pt")
    assert model.norm == run.norm
    older = {"model_name": "resnet18", "in_chans": 3, "config": {}}  # an older kit's fold, no input_norm: ImageNet's
    assert _saved_inputs(older)["input_norm"] == [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
