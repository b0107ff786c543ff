"""comp.tasks: each task's pieces (loss, activation, mixing of targets) against their definitions, and the
task settings that cannot go together named by their key."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import FAST, LABELS, write_competition
from timm.data import Mixup

from comp.config import read_config  # the schema's reader: make_task's own checks, under load_config's
from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config
from comp.tasks import Task, make_task, mix_matrix


def test_losses_and_activations_follow_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    soft = torch.rand(6, 3)
    soft = soft / soft.sum(1, keepdim=True)
    t = Task("multiclass", LABELS, "softmax", soft=True)
    kl = F.kl_div(logits.log_softmax(1), soft, reduction="batchmean")
    entropy = -(soft * soft.log()).sum(1).mean()
    assert torch.allclose(t.loss(logits, soft), kl + entropy, atol=1e-6)  # soft CE = KL + H(targets)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    b = Task("binary", ["benign", "malignant"], "sigmoid", positive=1)
    want = F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    assert torch.allclose(b.loss(logits[:, :1], y), want)
    p = b.activate(logits[:, :1])
    assert torch.allclose(p[:, 1], torch.sigmoid(logits[:, 0])) and torch.allclose(p.sum(1), torch.ones(6))
    flipped = Task("binary", ["malignant", "benign"], "sigmoid", positive=0)
    assert torch.allclose(flipped.loss(logits[:, :1], 1 - y), want)  # positive first: y==0 is the positive
    r = Task("regression", ["boneage"], "regression").fit_norm(np.array([10.0, 20.0, 30.0]))
    assert r.mean == 20.0 and r.std == pytest.approx(np.std([10.0, 20.0, 30.0]))
    assert torch.allclose(r.activate(torch.tensor([[1.0]])), torch.tensor([[20.0 + r.std]]))
    v = torch.tensor([20.0 + r.std])
    assert r.loss(torch.tensor([[1.0]]), v).item() == pytest.approx(0.0, abs=1e-6)


def test_mixup_matrix_mixes_targets_as_the_images():
    np.random.seed(0)
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=4)
    x = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    x0 = x.clone()
    mixed, m = mix_matrix(mixup, x)
    assert torch.allclose(m.sum(1), torch.ones(4))
    assert torch.allclose(mixed[:, 0, 0, 0], m @ x0[:, 0, 0, 0])  # the targets' matrix mixed the images too
    t = Task("multiclass", LABELS, "softmax")
    y = torch.tensor([0, 1, 2, 0])
    dense = t.dense(y, 0.1)
    old = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=3)
    np.random.seed(1)
    _, want = old(x0.clone(), y)
    np.random.seed(1)
    _, m = mix_matrix(mixup, x0.clone())
    assert torch.allclose(m @ dense, want, atol=1e-6)  # timm's own mixing of smoothed one-hot targets


def test_bad_task_settings_are_named(tmp_path):
    cfg = read_config(None, FAST + ["task=multilabel", "model.head=regression"])
    with pytest.raises(UserError, match="model.head"):
        make_task(cfg, LABELS)
    with pytest.raises(UserError, match="model.head"):  # the one loader refuses it when the config loads
        load_config(None, FAST + ["task=multilabel", "model.head=regression", "metric=auc"])
    cfg = read_config(None, FAST + ["task=binary"])
    with pytest.raises(UserError, match="two classes"):
        make_task(cfg, LABELS)
    over = write_competition(tmp_path / "d", "multilabel")
    pd.read_csv(tmp_path / "d" / "train.csv").assign(ngt=2).to_csv(tmp_path / "d" / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train.csv: row 2 column 'ngt' has '2'"):
        load_competition(load_config(None, FAST + over + ["metric=auc"]))


# --- task=multihead: one softmax head per target --------------------------------------------------------

HEADS = {"bowel": ["healthy", "injury"], "liver": ["healthy", "low", "high"]}


def _heads_cfg(*extra: str):
    heads = "{" + ", ".join(f"{t}: [{', '.join(c)}]" for t, c in HEADS.items()) + "}"
    return load_config(None, ["task=multihead", f"data.heads={heads}", "metric=log_loss", *extra])


def test_multihead_head_loss_activation_and_columns():
    cfg = _heads_cfg("train.head_weights={liver: 2.0}")
    names = ["bowel_healthy", "bowel_injury", "liver_healthy", "liver_low", "liver_high"]
    t = make_task(cfg, names)
    assert (t.num_logits, t.num_outputs, t.has_classes, t.dense_targets) == (5, 5, False, True)
    assert t.output_columns() == [f"prob_{n}" for n in names] and t.slices() == [slice(0, 2), slice(2, 5)]
    assert Task.from_meta(t.meta()) == t  # the checkpoint's copy
    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    out = t.activate(logits)
    assert torch.allclose(out[:, :2], logits[:, :2].softmax(1)) and torch.allclose(out[:, 2:], logits[:, 2:].softmax(1))
    y = torch.tensor([[1, 0, 0, 0, 1], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.float32)
    # row 2 leaves liver unlabelled (all zeros): out of liver's mean, in bowel's
    bowel = F.cross_entropy(logits[:, :2], torch.tensor([0, 1, 0, 1]))
    liver = F.cross_entropy(logits[[0, 1, 3], 2:], torch.tensor([2, 0, 1]))
    assert torch.allclose(t.loss(logits, y), bowel + 2.0 * liver, atol=1e-6)
    w = torch.tensor(t.loss_weight(y.numpy()), dtype=torch.float32)  # balanced per head, over its labelled rows
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]))
    wl = F.cross_entropy(logits[[0, 1, 3], 2:], torch.tensor([2, 0, 1]), weight=w[2:])
    assert torch.allclose(t.loss(logits, y, w), bowel + 2.0 * wl, atol=1e-6)
    smooth = t.dense(y, 0.3)  # each head smoothed over its own classes; an unlabelled head stays 0
    assert torch.allclose(smooth[2, 2:], torch.zeros(3)) and torch.allclose(smooth[:, :2].sum(1), torch.ones(4))
    assert torch.allclose(smooth[0, 2:], torch.tensor([0.1, 0.1, 0.8]))


def test_multihead_config_errors_name_the_key():
    with pytest.raises(UserError, match="data.heads"):
        load_config(None, ["task=multihead", "metric=log_loss"])
    with pytest.raises(UserError, match="data.heads.bowel"):
        load_config(None, ["task=multihead", "data.heads={bowel: [healthy]}", "metric=log_loss"])
    with pytest.raises(UserError, match="train.head_weights"):
        make_task(_heads_cfg("train.head_weights={spleen: 1.0}"), ["bowel_healthy", "bowel_injury", "liver_healthy",
                                                                  "liver_low", "liver_high"])
    with pytest.raises(UserError, match="rsna2023_trauma"):  # its outputs are not RSNA 2023's 13
        _heads_cfg("metric=rsna2023_trauma")


@pytest.mark.parametrize("loss", ["laplace", "gaussian_nll"])
def test_a_value_with_its_uncertainty_has_two_logits_value_and_sigma(loss):
    """train.loss=laplace | gaussian_nll: a regression head of 2 logits (mean, scale), outputs value and sigma
    in the target's units, the negative log-likelihood on standardised targets; averaged as a mixture."""
    cfg = read_config(None, FAST + ["task=regression", f"train.loss={loss}", "data.label_column=FVC"])
    t = make_task(cfg, ["FVC"]).fit_norm(np.array([1000.0, 2000.0, 3000.0]))
    assert (t.scale, t.num_logits, t.num_outputs, t.output_columns()) == (True, 2, 2, ["value", "sigma"])
    logits = torch.tensor([[0.0, 0.0], [1.0, -3.0]], requires_grad=True)
    out = t.activate(logits).detach()
    assert torch.allclose(out[:, 0], torch.tensor([2000.0, 2000.0 + t.std]))
    assert (out[:, 1] > 0).all() and out[0, 1] == pytest.approx((math.log(2) + 1e-3) * t.std, rel=1e-5)
    loss_value = t.loss(logits, torch.tensor([2000.0, 2500.0]))
    loss_value.backward()
    assert torch.isfinite(loss_value) and logits.grad[:, 1].abs().sum() > 0  # the scale learns too
    mixed = t.mix([np.array([[1.0, 1.0]]), np.array([[3.0, 1.0]])])
    np.testing.assert_allclose(mixed, [[2.0, math.sqrt(2.0)]])
    plain = make_task(read_config(None, FAST + ["task=regression"]), ["FVC"])
    assert (plain.scale, plain.num_logits, plain.output_columns()) == (False, 1, ["value"])
    np.testing.assert_allclose(plain.mix([np.array([[1.0]]), np.array([[3.0]])]), [[2.0]])


def test_a_likelihood_loss_is_refused_for_a_task_without_a_value():
    with pytest.raises(UserError, match="'train.loss': 'laplace' .* is for task=regression, not task=ordinal"):
        make_task(read_config(None, FAST + ["task=ordinal", "model.head=regression", "train.loss=laplace"]),
                  ["0", "1", "2"])
