"""comp.models.weights and the pretrained path of comp.models.factory: the weights files users bring, in the
layouts their tools write (torchvision, timm, Lightning, Hugging Face, the kit), load strictly with
weights_only=True, the classifier re-initialised and the first conv adapted where shapes differ; pickled
code is refused and never run; a bad file, a wrong key, a missing download is one UserError, and only a
failed download is the user's."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from omegaconf import OmegaConf

import comp.models.factory as factory
from comp.errors import UserError
from comp.models import create_model, load_pretrained, read_state_dict

MODEL = "timm/test_resnet"  # timm's 0.4M-parameter test ResNet: the layouts are the point, not the model


def _same_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == sd.keys() and all(torch.equal(own[k], v) for k, v in sd.items())


def _trained(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model(MODEL, 2).state_dict()


def _lightning_ckpt(sd: dict[str, torch.Tensor], hparams) -> dict:
    """What Lightning's Trainer.save_checkpoint writes for a LightningModule holding `self.model` and a
    weighted loss (`self.criterion`), with Adam, a scheduler, a ModelCheckpoint and EarlyStopping."""
    params = [torch.nn.Parameter(v.float().clone()) for v in list(sd.values())[:2]]
    opt = torch.optim.Adam(params, lr=1e-3)
    params[0].sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
    return {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.5.1",
        "state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "criterion.weight": torch.tensor([1.0, 3.0])},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0}": {
                "monitor": "val_loss", "best_model_score": torch.tensor(0.31), "best_model_path":
                "/runs/epoch=3-step=120.ckpt", "current_score": torch.tensor(0.31), "dirpath": "/runs"},
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {
                "wait_count": 0, "stopped_epoch": 0, "best_score": torch.tensor(0.31), "patience": 3}},
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs", "hyper_parameters": hparams,
    }


@pytest.mark.parametrize("hparams", ["dict", "omegaconf"])
def test_lightning_checkpoint_loads(tmp_path, hparams):
    sd = _trained(1)
    hp = {"lr": 1e-3, "num_classes": 2, "backbone": "resnet18", "class_weights": [1.0, 3.0]}
    ckpt = _lightning_ckpt(sd, hp if hparams == "dict" else OmegaConf.create(hp))
    if hparams == "omegaconf":  # Hydra users: Lightning keeps the container and its type
        ckpt["hparams_type"] = type(ckpt["hyper_parameters"])
    path = tmp_path / "epoch=3-step=120.ckpt"
    torch.save(ckpt, path)
    if hparams == "dict":
        torch.load(path, weights_only=True)  # a plain Lightning checkpoint is weights_only-loadable as it is
    model = create_model(MODEL, 2, pretrained=str(path))
    assert _same_weights(model, sd)  # the `model.` prefix found, the loss's weight left out


def test_timm_training_checkpoint_loads_as_timm_loads_it(tmp_path):
    """timm's train.py checkpoint (`args` an argparse.Namespace, EMA weights beside the weights): read
    the way timm's own load_checkpoint reads it (use_ema=True: the EMA weights)."""
    sd, ema = _trained(2), _trained(3)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    args = argparse.Namespace(model="test_resnet", lr=0.1, epochs=30, data_dir=str(tmp_path), output="")
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 29, "arch": "test_resnet", "state_dict": sd, "optimizer": opt.state_dict(), "version": 2,
                "args": args, "state_dict_ema": ema, "metric": 81.5}, path)
    with pytest.raises(Exception, match="argparse.Namespace|Unsupported global"):
        torch.load(path, weights_only=True)  # what the kit once did with it
    model = create_model(MODEL, 2, pretrained=str(path))
    assert _same_weights(model, ema)
    ref = timm.create_model("test_resnet", num_classes=2)
    timm.models.load_checkpoint(ref, str(path))
    assert _same_weights(model, ref.state_dict())
    # other scripts' metadata: numpy scalars and arrays, paths (read as inert stand-ins, never imported)
    torch.save({"state_dict": sd, "metric": np.float64(81.5), "hist": np.zeros(3), "out": Path(tmp_path)}, path)
    assert _same_weights(create_model(MODEL, 2, pretrained=str(path)), sd)


def test_hugging_face_and_timm_hub_layouts_load(tmp_path):
    sd = _trained(4)
    bin_dir, st_dir, shard_dir, wrap_dir = (tmp_path / n for n in ("bin", "st", "shards", "wrapper"))
    for d in (bin_dir, st_dir, shard_dir, wrap_dir):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 2,
                                                   "pretrained_cfg": {"input_size": [3, 224, 224]}}))
    torch.save(sd, bin_dir / "pytorch_model.bin")
    safetensors.torch.save_file(sd, st_dir / "model.safetensors")  # timm's push_to_hf_hub layout
    keys = list(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        safetensors.torch.save_file({k: sd[k] for k in ks}, shard_dir / name)
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    # transformers' TimmWrapperModel keeps the timm model under `timm_model.`
    safetensors.torch.save_file({f"timm_model.{k}": v for k, v in sd.items()}, wrap_dir / "model.safetensors")
    for source in (bin_dir, bin_dir / "pytorch_model.bin", st_dir, shard_dir, wrap_dir):
        assert _same_weights(create_model(MODEL, 2, pretrained=str(source)), sd), source
    assert read_state_dict(bin_dir).keys() == sd.keys()
    with pytest.raises(UserError, match="holds none of model.safetensors"):
        read_state_dict(tmp_path)


def test_kit_checkpoint_loads_the_weights_it_was_scored_with(tmp_path):
    sd, ema = _trained(5), _trained(6)
    path = tmp_path / "best.pt"
    torch.save({"model": sd, "ema": ema, "eval_weights": "ema", "epoch": 4, "classes": ["a", "b"]}, path)
    assert _same_weights(create_model(MODEL, 2, pretrained=str(path)), ema)
    torch.save({"model": sd, "ema": None, "eval_weights": "model"}, path)
    assert _same_weights(create_model(MODEL, 2, pretrained=str(path)), sd)


def test_a_ddp_wrapped_module_inside_a_lightning_module_loads(tmp_path):
    """`model.module.` (DDP inside the LightningModule): `model.` and `model.module.` are one candidate."""
    sd = _trained(10)
    ckpt = _lightning_ckpt(sd, {})
    ckpt["state_dict"] = {**{f"model.module.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(2)}
    path = tmp_path / "ddp.ckpt"
    torch.save(ckpt, path)
    assert _same_weights(create_model(MODEL, 2, pretrained=str(path)), sd)


def test_two_copies_under_two_prefixes_is_the_users_choice(tmp_path):
    sd, ema = _trained(8), _trained(9)
    ckpt = _lightning_ckpt(sd, {})
    ckpt["state_dict"].update({f"ema_model.{k}": v for k, v in ema.items()})
    path = tmp_path / "ema.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="under 2 prefixes .*'model.'.*'ema_model.'|under 2 prefixes .*'ema_model.'"):
        create_model(MODEL, 2, pretrained=str(path))


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


def test_timm_model_loads_weights_file(tmp_path):
    """The generic path: classifier and first conv found from timm's pretrained_cfg (not `fc`/`conv1`)."""
    src = timm.create_model("mobilenetv3_small_050")
    path = _save(src.state_dict(), tmp_path / "mnv3.safetensors")
    model = create_model("timm/mobilenetv3_small_050", 4, in_chans=1, pretrained=path)
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.blocks[2][0].conv_pw.weight, src.blocks[2][0].conv_pw.weight)
    assert model.get_classifier().weight.shape[0] == 4


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


class _Payload:
    """Unpickling this calls os.mkdir(marker): code a weights file must never run (a user's own class in a
    checkpoint's metadata: importing it would run the user's module)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# each writes a weights file carrying code into a folder; returns the file, the error it gets, an unsafe load


def _torch_save(folder: Path) -> tuple[Path, str, Callable]:
    path = folder / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(folder / "ran")}, path)
    unsafe = lambda: torch.load(path, weights_only=False)  # noqa: E731
    return path, r"refusing to load .*evil.pth.*weights_only=True: .*GLOBAL", unsafe


def _plain_pickle(folder: Path) -> tuple[Path, str, Callable]:
    path = folder / "weights.pkl"
    path.write_bytes(pickle.dumps(_Payload(folder / "ran")))
    return path, "refusing to load", lambda: pickle.loads(path.read_bytes())


def _lightning_metadata(folder: Path) -> tuple[Path, str, Callable]:
    ckpt = _lightning_ckpt(_trained(7), {"lr": 1e-3})
    ckpt["hyper_parameters"]["callback"] = _Payload(folder / "ran")
    path = folder / "evil.ckpt"
    torch.save(ckpt, path)
    return path, r"refusing to load .*evil.ckpt.*GLOBAL posix.mkdir", lambda: torch.load(path, weights_only=False)


@pytest.mark.parametrize("write", [_torch_save, _plain_pickle, _lightning_metadata],
                         ids=["torch.save", "plain pickle", "Lightning metadata"])
def test_code_in_a_weights_file_is_refused_and_not_run(tmp_path, write):
    path, match, unsafe = write(tmp_path)
    with pytest.raises(UserError, match=match):
        create_model(MODEL, 2, pretrained=str(path))
    with pytest.raises(UserError, match=match):
        read_state_dict(path)
    assert not (tmp_path / "ran").exists()
    unsafe()  # the payload is live: an unsafe load would have run it
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("exc, user", [
    (OSError("We couldn't connect to 'https://huggingface.co'"), True),  # offline
    (ConnectionError("no route to host"), True),
    (RuntimeError("a bug in timm"), False),
    (TypeError("unexpected keyword"), False),
], ids=["offline", "connection refused", "a bug in timm", "a bug in the call"])
def test_only_a_failed_download_of_pretrained_weights_is_the_users(monkeypatch, exc, user):
    def create(*_a, **_k):
        raise exc

    monkeypatch.setattr(factory.timm, "create_model", create)
    for name, tag in (("resnet50", "a1_in1k"), ("timm/efficientnet_b0", "timm"), ("timm/test_resnet", "r160_in1k")):
        with pytest.raises(UserError if user else type(exc)) as e:
            create_model(name, 2, pretrained=tag)
        assert ("could not be downloaded" in str(e.value)) == user, name
        assert ("local weights file" in str(e.value)) == user, name
