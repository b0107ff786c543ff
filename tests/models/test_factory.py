"""comp.models.factory: timm models by name (any input channels), and the backbone / head split a frozen-backbone
warm-up and the optimizer's parameter groups (comp.train.optim) rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comp.models import create_model, set_backbone_trainable
from comp.train.optim import param_groups


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/mobilenetv3_small_050"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_timm_models_build_and_run(name, in_chans):
    model = create_model(name, 3, in_chans=in_chans).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", ["resnet18", "timm/mobilenetv3_small_050"])
def test_frozen_backbone_warmup(name):
    model = create_model(name, 3).train()
    head = {id(p) for p in model.get_classifier().parameters()}
    set_backbone_trainable(model, False)
    assert {id(p) for p in model.parameters() if p.requires_grad} == head
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(param_groups(model, lr=0.1, backbone_lr_mult=0.1, weight_decay=1e-4), momentum=0.9)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    clf = next(n for n, m in model.named_modules() if m is model.get_classifier())  # "fc", "classifier"
    assert changed == {f"{clf}.weight", f"{clf}.bias"}  # backbone weights and BN running stats untouched

    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in bns)


def test_param_groups():
    model = create_model("resnet18", 3)
    groups = param_groups(model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    assert by_name["head"]["params"] == [model.fc.weight] and by_name["head"]["lr"] == 1e-3
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4) and by_name["backbone"]["lr_mult"] == 0.1
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and by_name["backbone"]["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in by_name["backbone_no_decay"]["params"])
