"""comp.models: the hand-written ResNets equal timm's (outputs, gradients, parameter counts), weights files
from torchvision and timm load strictly, grayscale input, safe loading, the warm-up helpers."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from comp.errors import UserError
from comp.models import (
    ResNet,
    create_model,
    list_models,
    load_pretrained,
    read_state_dict,
    set_backbone_trainable,
)
from comp.train.optim import param_groups

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.mark.parametrize("name", DEPTHS)
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


def _save(sd: dict, path: Path, wrap: str | None = None) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save({wrap: sd, "epoch": 3} if wrap else sd, path)
    return path


@pytest.mark.parametrize(
    "source,name,filename,wrap",
    [
        ("torchvision", "resnet18", "resnet18-tv.pth", None),
        ("torchvision", "resnet50", "resnet50-tv.pth", None),
        ("timm", "resnet18", "pytorch_model.bin", None),
        ("timm", "resnet34", "model.safetensors", None),
        ("kit", "resnet18", "best.pt", "model"),  # a kit checkpoint
        ("timm", "resnet18", "checkpoint.pth.tar", "state_dict"),  # a timm train.py checkpoint
    ],
)
def test_weights_files_load_strictly(tmp_path, source, name, filename, wrap):
    if source == "torchvision":
        sd = getattr(torchvision.models, name)(weights=None).state_dict()
    elif source == "timm":
        sd = timm.create_model(name).state_dict()
    else:
        sd = create_model(name, 1000).state_dict()
    path = _save(sd, tmp_path / filename, wrap)
    model = create_model(name, 1000, pretrained=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_classifier_reinitialised_when_num_classes_differs(tmp_path):
    sd = timm.create_model("resnet18").state_dict()
    path = _save(sd, tmp_path / "r18.safetensors")
    model = create_model("resnet18", 5, pretrained=path)
    assert model.fc.weight.shape == (5, 512)
    assert torch.equal(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    fresh = load_pretrained(create_model("resnet18", 5), sd, source="test")
    assert fresh == ["fc.weight", "fc.bias"]
    # A headless source (saved with num_classes=0) loads too; the classifier keeps its fresh init.
    headless = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    assert load_pretrained(create_model("resnet18", 1000), headless, source="test") == ["fc.weight", "fc.bias"]


def test_grayscale_sums_first_conv(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = _save(sd, tmp_path / "r18.pth")
    gray = create_model("resnet18", 1000, in_chans=1, pretrained=path).eval()
    rgb = create_model("resnet18", 1000, pretrained=path).eval()
    assert torch.equal(gray.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # summed filters on gray == RGB filters on the gray image copied to R, G, B
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/mobilenetv3_small_050"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_timm_models_build_and_run(name, in_chans):
    model = create_model(name, 3, in_chans=in_chans).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 3)


def test_timm_model_loads_weights_file(tmp_path):
    """The generic path: classifier and first conv found from timm's pretrained_cfg (not `fc`/`conv1`)."""
    src = timm.create_model("mobilenetv3_small_050")
    path = _save(src.state_dict(), tmp_path / "mnv3.safetensors")
    model = create_model("timm/mobilenetv3_small_050", 4, in_chans=1, pretrained=path)
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.blocks[2][0].conv_pw.weight, src.blocks[2][0].conv_pw.weight)
    assert model.get_classifier().weight.shape[0] == 4


class _Payload:
    """Unpickling this calls os.mkdir(marker): code a weights file must never run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(tmp_path / "ran")}, path)
    with pytest.raises(UserError, match="refusing to load .*evil.pth.*weights_only=True: .*GLOBAL"):
        create_model("resnet18", 2, pretrained=str(path))
    assert not (tmp_path / "ran").exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert (tmp_path / "ran").exists()


def test_plain_pickle_of_custom_class_is_refused(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(_Payload(tmp_path / "ran")))
    with pytest.raises(UserError, match="refusing to load"):
        read_state_dict(path)
    assert not (tmp_path / "ran").exists()


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown model 'resnet19'.*resnet18.*'timm/' prefix"):
        create_model("resnet19", 2)
    with pytest.raises(UserError, match="timm has no model 'not_a_model'"):
        create_model("timm/not_a_model", 2)
    with pytest.raises(UserError, match="not found: .*missing.pth"):
        create_model("resnet18", 2, pretrained=str(tmp_path / "missing.pth"))
    good = _save(create_model("resnet18", 2).state_dict(), tmp_path / "good.pth")
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated.pth: not a PyTorch weights file"):
        create_model("resnet18", 2, pretrained=str(tmp_path / "truncated.pth"))
    (tmp_path / "page.pth").write_text("<html>404</html>")  # a failed download: not a pickle either
    with pytest.raises(UserError, match="refusing to load .*page.pth"):
        create_model("resnet18", 2, pretrained=str(tmp_path / "page.pth"))
    path = _save(timm.create_model("resnet50").state_dict(), tmp_path / "r50.safetensors")
    with pytest.raises(UserError, match="r50.safetensors: keys this model does not have: layer1.0.bn3"):
        create_model("resnet18", 2, pretrained=path)
    sd = create_model("resnet18", 2).state_dict()
    with pytest.raises(UserError, match="shapes differ from the model's: layer1.0.conv1.weight"):
        load_pretrained(create_model("resnet18", 2), {**sd, "layer1.0.conv1.weight": torch.zeros(1)}, "x")
    del sd["layer4.1.bn2.running_var"]
    with pytest.raises(UserError, match="missing keys for this model: layer4.1.bn2.running_var"):
        load_pretrained(create_model("resnet18", 2), sd, "x")
    with pytest.raises(UserError, match="pretrained='bogus'.*tv_in1k"):
        create_model("resnet18", 2, pretrained="bogus")


def test_hub_tag_copies_timm_weights(monkeypatch):
    real = timm.create_model
    made = {}

    def fake(name, pretrained=False, **kw):  # stands in for a download: random weights, remembered
        made[name] = real(name, pretrained=False, **kw)
        return made[name]

    monkeypatch.setattr(timm, "create_model", fake)
    model = create_model("resnet18", 1000, in_chans=1, pretrained="tv_in1k")
    src = made["resnet18.tv_in1k"].state_dict()
    assert torch.equal(model.conv1.weight, src["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.fc.weight, src["fc.weight"])
    create_model("resnet18", 2, pretrained="imagenet")
    assert "resnet18" in made  # timm's default tag


def test_hub_offline_is_a_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="could not be downloaded.*local weights file"):
        create_model("resnet50", 2, pretrained="a1_in1k")
    with pytest.raises(UserError, match="could not be downloaded"):
        create_model("timm/efficientnet_b0", 2, pretrained="timm")


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


def test_crosscheck_script(capsys):
    spec = importlib.util.spec_from_file_location("crosscheck", ROOT / "scripts" / "crosscheck.py")
    crosscheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crosscheck)
    assert crosscheck.main(["--depths", "resnet18", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11,689,512" in out and "ok" in out
