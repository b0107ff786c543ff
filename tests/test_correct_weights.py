"""Correctness against public bug reports (issue 13), the weights side: the files users bring, in the
layouts their tools write (timm, torchvision, Lightning, Hugging Face, the kit), load with
weights_only=True; pickled code in them is still refused and never run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from omegaconf import OmegaConf

from comp.errors import UserError
from comp.models import create_model, read_state_dict

# --- 18a. the weights files users bring, in the layouts their tools write ---------------------------


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


class _HParams:
    """A user's own class in a checkpoint's metadata: importing it would run the user's module."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_metadata_that_is_code_still_refuses_the_checkpoint(tmp_path):
    ckpt = _lightning_ckpt(_trained(7), {"lr": 1e-3})
    ckpt["hyper_parameters"]["callback"] = _HParams(tmp_path / "ran")
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"refusing to load .*evil.ckpt.*GLOBAL posix.mkdir"):
        create_model(MODEL, 2, pretrained=str(path))
    assert not (tmp_path / "ran").exists()


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
