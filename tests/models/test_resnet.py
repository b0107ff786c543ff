"""comp.models.resnet: the hand-written ResNets equal timm's (outputs, gradients, parameter counts, state-dict
keys) and torchvision's (outputs with its weights, strictly loaded), timm's init and interface, channels-last.
The parity is tested here on resnet18 (basic blocks) and resnet50 (bottlenecks); scripts/crosscheck.py checks
every depth on demand, and is run here on one."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from helpers import ROOT
from torch import nn

from comp.models import ResNet, create_model, list_models

DEPTHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Random BN gamma/beta (timm zero-inits the last gamma of each branch, which would hide a wrong
    branch) and running stats from one train-mode pass, so eval outputs stay O(1..10)."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.momentum = 1.0
        model.train()(x)
        for m in bns:
            m.momentum = 0.1


def test_list_models():
    assert list_models() == DEPTHS


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])  # 34, 101, 152: scripts/crosscheck.py
def test_resnet_equals_timm(name):
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=10)
    kit = create_model(name, num_classes=10)
    assert n_params(kit) == n_params(ref)
    assert [(k, v.shape) for k, v in kit.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]

    x = torch.randn(2, 3, 32, 32)
    randomize_bn(ref, x)
    kit.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        assert (kit.eval()(x) - ref.eval()(x)).abs().max() <= 1e-5

    y = torch.tensor([1, 7])
    for m in (kit, ref):
        F.cross_entropy(m.train()(x), y).backward()
    for (n, p), (n_ref, p_ref) in zip(kit.named_parameters(), ref.named_parameters(), strict=True):
        assert n == n_ref
        assert p_ref.grad.abs().max() > 0, n  # every parameter takes part
        assert (p.grad - p_ref.grad).abs().max() <= 1e-4 * p_ref.grad.abs().max(), n


def test_default_init_matches_timm_convention():
    """Kaiming fan_out convs and zero-init last BN gamma per block, as timm: kit and timm train alike."""
    kit = create_model("resnet50", 10)
    assert all(b.bn3.weight.count_nonzero() == 0 for layer in (kit.layer1, kit.layer4) for b in layer)
    assert kit.bn1.weight.min().item() == 1.0
    std = kit.conv1.weight.std().item()  # fan_out = 64 * 7 * 7, gain sqrt(2)
    assert abs(std - (2 / (64 * 49)) ** 0.5) < 0.1 * std
    assert create_model("resnet18", 10).layer1[0].bn2.weight.abs().max() == 0


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_equals_torchvision(name):
    tv = getattr(torchvision.models, name)(weights=None).eval()
    kit = create_model(name, 1000).eval()
    kit.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (kit(x) - tv(x)).abs().max() <= 1e-5


def test_model_interface():
    model = create_model("resnet18", 3, drop_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(model, ResNet) and model.num_features == 512
    assert model.get_classifier() is model.fc
    feats = model.forward_features(x)
    assert feats.shape == (2, 512, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))
        model.train()
        assert not torch.equal(model.forward_head(feats), model.forward_head(feats))  # dropout is on
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)
    assert create_model("resnet50", 2).num_features == 2048


def test_channels_last_matches_contiguous():
    model = create_model("resnet50", 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_crosscheck_script(capsys):
    spec = importlib.util.spec_from_file_location("crosscheck", ROOT / "scripts" / "crosscheck.py")
    crosscheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crosscheck)
    assert crosscheck.main(["--depths", "resnet18", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11,689,512" in out and "ok" in out
