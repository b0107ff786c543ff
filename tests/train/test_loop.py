"""The training loop (comp.train.loop) in-process on a tiny competition: a frozen-backbone warm-up, the files
of a fold, a loss that turns non-finite, out of memory, loader workers, and every loss option under mixup."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from helpers import copy_of, one_error, run_main, snapshot, trained_fixture

import comp.train.loop as loop_mod
from comp.errors import UserError
from comp.experiment import load_config
from comp.report.plots import fold_figures
from comp.train.build import build_run
from comp.train.loop import fit, train_one_epoch

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4"]  # 15 training images: 3 steps per epoch
RESUME = ("train_fold.py", "--fold", "0", "--resume")


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "train_loop")


@pytest.fixture
def ex(trained, tmp_path) -> dict:
    return copy_of(trained, tmp_path / "ex")


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


def test_a_lower_is_better_metric_picks_its_lowest_epoch_and_early_stops_on_it(tiny):
    """metric log_loss: best.pt is the epoch of the lowest log loss, and an epoch counts as "no gain" for the
    early stop when its log loss does not go down (loop._improved, asked by best epoch, early stop and SWA)."""
    from comp.train.loop import _improved

    assert _improved(0.4, 0.5, higher=False) and not _improved(0.6, 0.5, higher=False)
    assert _improved(0.6, 0.5) and not _improved(0.4, 0.5)
    assert _improved(0.6, None, higher=False) and _improved(0.6, float("nan"), higher=False)
    # a tie on the metric (a small fold's AUC at 1.0 from epoch 0): the lower validation loss wins
    assert _improved(1.0, 1.0, True, 0.3, 0.69) and not _improved(1.0, 1.0, True, 0.7, 0.69)
    assert not _improved(1.0, 1.0, True)  # without losses (an older checkpoint's state): the earlier epoch stays
    result = fit(config(tiny, "epochs=3", "metric=log_loss", "optim.lr=0.01"), 0)
    m = pd.read_csv(result["dir"] / "metrics.csv")
    best = torch.load(result["dir"] / "best.pt", weights_only=True)
    assert best["epoch"] - 1 == m["log_loss"].idxmin() and result["best"] == m["log_loss"].min()


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_every_file(ex):
    # the same refusal from the library (a notebook's fit) and from the script, on one copy: the first
    # changes nothing, so the second starts from the very same files
    before = snapshot(ex["base"])
    blown = ["epochs=3", "batch_size=4", "optim.lr=1e30"]
    with pytest.raises(UserError, match=r"(loss is (nan|inf)|weight .* is not finite) at epoch 1 step \d") as e:
        fit(load_config(None, [*ex["overrides"], *blown]), 0, resume=True)
    assert "intact" in str(e.value) and "\n" not in str(e.value)
    assert snapshot(ex["base"]) == before and not (ex["fold"] / "recovery.pt").exists()

    code, _, err = run_main(*RESUME, *ex["overrides"], *blown)
    one_error(code, err, "loss is nan at epoch 1 step 1 (fold 0)", "checkpoints in", "are intact",
              "try a lower optim.lr or set train.clip_grad")
    assert snapshot(ex["base"]) == before  # config.yaml too: the failed attempt's settings are not recorded


def _gpu_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total "
                                 "capacity; 14.90 GiB already allocated)\nmore lines of allocator detail")


def _ram_oom(*args, **kwargs):
    torch.empty(2**62, dtype=torch.uint8)  # the real CPU allocator's failure


@pytest.mark.parametrize("oom, where, debug", [(_gpu_oom, "GPU", False), (_ram_oom, "RAM", False),
                                               (_gpu_oom, "GPU", True)], ids=["GPU", "RAM", "GPU-debug"])
def test_out_of_memory_in_training_suggests_a_smaller_batch(ex, monkeypatch, oom, where, debug):
    monkeypatch.setattr(loop_mod, "_forward_loss", oom)
    before = snapshot(ex["base"])
    code, _, err = run_main(*RESUME, *(["--debug"] if debug else []), *ex["overrides"], "epochs=2")
    if debug:  # --debug: the traceback, then the same line last
        assert code == 2 and "Traceback" in err and "OutOfMemoryError" in err
        assert err.strip().splitlines()[-1].startswith("error: out of memory (GPU)")
    else:
        one_error(code, err, f"out of memory ({where}); try a smaller batch_size (now 8: e.g. batch_size=4)")
        assert snapshot(ex["base"]) == before


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


def test_every_loss_option_takes_effect_with_mixup(tiny):
    # mixup/cutmix replace the hard labels by soft targets, and the loss by its soft-target form: class weights
    # and label smoothing must still act (they were once silently dropped).
    from types import SimpleNamespace

    from comp.tasks import Task, mix_matrix

    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    hard = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([0.5, 1.0, 3.0])
    run = SimpleNamespace(model=lambda x: x, device=torch.device("cpu"), amp_dtype=None, mixup=object(),
                          loss_weight=w, cfg=SimpleNamespace(train=SimpleNamespace(label_smoothing=0.0),
                                                              mil=SimpleNamespace(source="none", aux_weight=0.0)),
                          task=Task("multiclass", ["a", "b", "c"], "softmax"))
    soft = torch.nn.functional.one_hot(hard, 3).float()
    weighted = loop_mod._forward_loss(run, logits, soft)
    assert torch.allclose(weighted, torch.nn.functional.cross_entropy(logits, hard, weight=w))  # one-hot: exact
    run.loss_weight = None
    assert not torch.allclose(loop_mod._forward_loss(run, logits, soft), weighted)  # the weights took effect
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


def test_the_mil_instance_loss_adds_each_instance_against_its_row_target():
    """mil.aux_weight: the loss is the rows' plus the weight times the head on each instance against its row's
    target (comp.models.mil's with_instances path); 0 leaves the rows' alone."""
    from types import SimpleNamespace

    from comp.models.factory import create_mil_model
    from comp.tasks import Task

    torch.manual_seed(0)
    model = create_mil_model("timm/test_resnet", 3, "attention")
    x, y = torch.randn(2, 4, 3, 16, 16), torch.tensor([0, 2])
    task = Task(kind="multiclass", names=["a", "b", "c"], head="softmax")
    cfg = load_config(None, ["mil.source=series", "mil.aux_weight=0.5", "train.label_smoothing=0"])
    run = SimpleNamespace(cfg=cfg, model=model, task=task, loss_weight=None, mixup=None, distill=None,
                          amp_dtype=None, device=torch.device("cpu"))
    got = loop_mod._forward_loss(run, x, y)
    logits, inst = model(x, with_instances=True)
    rows = torch.nn.functional.cross_entropy(logits, y)
    each = torch.nn.functional.cross_entropy(inst.flatten(0, 1), y.repeat_interleave(4))
    assert torch.allclose(got, rows + 0.5 * each)
    run.cfg = load_config(None, ["mil.source=series", "train.label_smoothing=0"])
    assert torch.allclose(loop_mod._forward_loss(run, x, y), rows)
    # with a teacher: its loss on the packed targets, the instances against the hard part alone
    from comp.teacher.distill import Distiller

    run.cfg = cfg
    run.distill = Distiller(alpha=0.5, temperature=2.0, hard_width=1, hard_index=True, hard_1d=True)
    packed = torch.cat([y[:, None].float(), torch.randn(2, 3)], 1)
    want = run.distill.loss(task, logits, packed, None, 0.0) + 0.5 * each
    assert torch.allclose(loop_mod._forward_loss(run, x, packed), want)
