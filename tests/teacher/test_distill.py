"""Knowledge distillation (comp.teacher.distill, distill.teacher) and its leak rules: student fold K learns
from teacher fold K's model only, a teacher on another split or retrained since is refused, alpha 1 trains
exactly the plain student, and the loss of every head is smallest where the student's outputs are the
teacher's."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from teacher_run import student, trained_teacher

from comp.errors import UserError
from comp.tasks import Task
from comp.teacher.distill import Distiller
from comp.train.build import build_run
from comp.train.loop import fit


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict:
    return trained_teacher(tmp_path_factory)


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
    teacher (the teacher's forward passes, the packed targets and their split change nothing else): a
    distilled student that scores lower does so because of its schedule, not of a misaligned or perturbed
    pipeline."""
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


def test_multihead_soft_targets_are_each_heads_softmax():
    """task=multihead: the teacher's logits become a softmax per head at temperature T, the soft loss the sum
    of the heads' soft cross-entropies x T^2 (a softmax over all 5 logits would mix the heads)."""
    task = Task("multihead", ["b_h", "b_i", "l_h", "l_l", "l_x"], "multihead", heads=[["b", 2], ["l", 3]],
                head_weights=[1.0, 1.0])
    torch.manual_seed(0)
    logits, soft = torch.randn(4, 5), torch.randn(4, 5)
    hard = torch.tensor([[1, 0, 0, 1, 0]] * 4, dtype=torch.float32)
    d = Distiller(alpha=0.0, temperature=2.0, hard_width=5, hard_index=False, hard_1d=False)
    want = sum(torch.sum(-(soft[:, s] / 2).softmax(1) * (logits[:, s] / 2).log_softmax(1), dim=1).mean()
               for s in (slice(0, 2), slice(2, 5))) * 4
    assert torch.allclose(d.loss(task, logits, torch.cat([hard, soft], 1), None, 0.0), want, atol=1e-6)
def test_a_head_with_a_scale_is_not_distilled():
    """The soft loss of a regression head is the MSE to the teacher's value: a Laplace head would learn no sigma
    from it, so distillation refuses it in one line before reading any checkpoint."""
    from comp.teacher.distill import teacher_outputs

    task = Task("regression", ["FVC"], "regression", loss_name="laplace")
    with pytest.raises(UserError, match="distill.teacher: a value with its uncertainty"):
        teacher_outputs(None, None, [], [], task, None)


# --- MIL rows (mil.source set) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mil_fold(tmp_path_factory):
    from mil_fold import trained_mil_fold

    return trained_mil_fold(tmp_path_factory)


def test_a_mil_student_learns_from_a_mil_teacher_and_refuses_a_single_image_one(teacher, mil_fold, tmp_path):

    from mil_fold import train_student

    from comp.data.competition import load_competition
    from comp.experiment import load_config
    from comp.experiment.model import load_model
    from comp.teacher.distill import teacher_outputs

    out = train_student(mil_fold, tmp_path, f"distill.teacher={mil_fold['out']}")
    assert (out / "fold0" / "best.pt").is_file()
    mil_ck, image_ck = mil_fold["out"] / "fold0" / "best.pt", teacher["out"] / "fold0" / "best.pt"
    mil_cfg = load_config(mil_fold["config"], mil_fold["overrides"])
    comp = load_competition(mil_cfg)
    with pytest.raises(UserError, match=r"mil.source=none but the student's is mil.source=study"):
        teacher_outputs(mil_cfg, comp, [image_ck], comp.train["path"].tolist(), load_model(mil_ck).task,
                        torch.device("cpu"))
    comp = load_competition(teacher["cfg"])
    with pytest.raises(UserError, match=r"mil.source=study but the student's is mil.source=none"):
        teacher_outputs(teacher["cfg"], comp, [mil_ck], comp.train["path"].tolist(), load_model(image_ck).task,
                        torch.device("cpu"))
