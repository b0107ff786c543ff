"""Read the state dict out of a weights file a user brings, in the layouts real tools write, without ever
running pickled code.

Layouts: torchvision's and timm's `.pth` state dicts, timm's training checkpoints (`state_dict`,
`state_dict_ema`, argparse `args`), Lightning's `.ckpt` (`state_dict` with the LightningModule's
attribute as a key prefix, `hyper_parameters`, `optimizer_states`, callbacks), Hugging Face's
`pytorch_model.bin` / `model.safetensors` (sharded with an `.index.json` or not) and timm's hub folder
(`config.json` + `model.safetensors`), the kit's own checkpoints (`model`, `ema`, `eval_weights`).
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from timm.models import clean_state_dict

from comp.errors import UserError
from comp.log import log

# Training metadata that real checkpoints pickle beside the weights (timm's train.py saves its argparse
# `args`, Lightning its `hyper_parameters` (an OmegaConf container with Hydra), numpy scalars in metrics,
# paths in callbacks). torch's weights_only unpickler refuses them all; these names, and only these, are
# read as inert stand-ins (`_Inert`): their arguments are kept, nothing of theirs is imported or run.
# Any other global (a function, a custom class: pickled code) still refuses the file.
_METADATA_GLOBALS = {
    "argparse.Namespace", "typing.Any", "numpy.dtype", "numpy.ndarray",
    *(f"numpy.{core}.multiarray.{f}" for core in ("core", "_core") for f in ("scalar", "_reconstruct")),
    *(f"pathlib.{m}{c}" for m in ("", "_local.") for c in ("Path", "PosixPath", "WindowsPath", "PurePath",
                                                            "PurePosixPath", "PureWindowsPath")),
    *(f"builtins.{t}" for t in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool",
                                "bytes", "object")),
}
_METADATA_PREFIXES = ("omegaconf.", "numpy.dtypes.")
_DICT_GLOBALS = {"collections.defaultdict", "lightning.fabric.utilities.data.AttributeDict",
                 "lightning_fabric.utilities.data.AttributeDict",
                 "pytorch_lightning.utilities.parsing.AttributeDict"}  # dict subclasses: read as dicts
# where a checkpoint keeps its weights, in the order a loader prefers them (timm's load_state_dict with
# use_ema=True, then Lightning's and torch's conventions; the kit's own says which in `eval_weights`)
_WEIGHT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_HUB_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")  # a Hugging Face / timm hub folder, preferred first


class _Inert:
    """What a metadata object of a checkpoint is read as: its arguments and state kept, nothing run."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _InertDict:
    """A dict subclass of a checkpoint's metadata (Lightning's AttributeDict, defaultdict) read as a dict."""

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:
        return {}


def read_state_dict(path: str | os.PathLike, model_keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, as the tools users train with write them.

    Reads `.safetensors`, and any other file as a torch pickle with `weights_only=True` (torchvision's
    and timm's `.pth`, Hugging Face's `pytorch_model.bin`, Lightning's `.ckpt`, timm's `.pth.tar`
    training checkpoints); a folder in the Hugging Face / timm hub layout (`model.safetensors`, or
    `pytorch_model.bin`, sharded with an `.index.json` or not). Training metadata beside the weights
    (`_METADATA_GLOBALS`) is read as inert stand-ins; any other pickled global is refused, never run.
    A checkpoint is unwrapped (`_WEIGHT_KEYS`), DDP/compile prefixes (`module.`, `_orig_mod.`) dropped, and
    with `model_keys` (the model's state-dict keys) a wrapper's prefix too: a LightningModule's attribute
    (`model.`), a Hugging Face wrapper's (`timm_model.`), whichever gives the model its keys.

    Raises:
        UserError: missing or unreadable file, pickled code, no state dict, two candidate copies of the
            weights under different prefixes.
    """
    path = Path(path)
    if path.is_dir():
        path = _hub_file(path)
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")
    if path.name.endswith(".index.json"):
        obj: Any = _read_shards(path)
    elif path.suffix == ".safetensors":
        obj = _read_safetensors(path)
    else:
        obj = _read_pickle(path)
    if isinstance(obj, Mapping):
        if obj.get("eval_weights") == "ema" and isinstance(obj.get("ema"), Mapping):  # a kit checkpoint
            obj = obj["ema"]
        else:
            obj = next((obj[k] for k in _WEIGHT_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: not a state dict: {bad[0]!r} holds a {type(obj[bad[0]]).__name__}, not a tensor")
    sd = clean_state_dict(dict(obj))
    return _unwrap_prefix(sd, set(model_keys), path) if model_keys is not None else sd


def _hub_file(folder: Path) -> Path:
    """The weights file of a Hugging Face / timm hub folder (config.json + model.safetensors ...)."""
    for name in _HUB_FILES:
        if (folder / name).is_file():
            return folder / name
    have = sorted(p.name for p in folder.iterdir())[:8]
    raise UserError(f"pretrained folder {folder} holds none of {', '.join(_HUB_FILES)} (it has {have})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as e:  # SafetensorError: bad header, truncated file
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    """A sharded checkpoint: the index's `weight_map` names the shard file of every tensor."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{index}: not a sharded-checkpoint index with a weight_map ({e})") from None
    out: dict[str, torch.Tensor] = {}
    for name in shards:
        shard = index.parent / name
        if not shard.is_file():
            raise UserError(f"{index}: names shard {name!r}, which is not in {index.parent}")
        out.update(_read_safetensors(shard) if shard.suffix == ".safetensors" else _read_pickle(shard))
    return out


def _read_pickle(path: Path) -> Any:
    """torch.load with weights_only=True; a second try with training metadata read as stand-ins when
    nothing else stopped the first."""
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as e:
        first = e
    except Exception as e:  # not a zip/pickle at all: truncated download, HTML error page, ...
        raise UserError(f"{path}: not a PyTorch weights file ({type(e).__name__}: {e})") from None
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (non-zip) format cannot be listed: refuse as the unpickler did
        unsafe = None
    code = [g for g in unsafe or [] if not _is_metadata(g)]
    if unsafe is None or code or not unsafe:
        what = f"GLOBAL {code[0]}" if code else _reason(first)
        raise UserError(f"refusing to load {path}: it is not a plain weights file (weights_only=True: {what}); "
                        "re-save its state dict, or use .safetensors")
    stand_ins = [(_InertDict if g in _DICT_GLOBALS else _Inert, g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return _torch_load(path)
    except Exception as e:
        raise UserError(f"refusing to load {path}: its metadata could not be read without running it "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "re-save its state dict, or use .safetensors") from None


def _torch_load(path: Path) -> Any:
    with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_metadata(name: str) -> bool:
    return name in _METADATA_GLOBALS or name in _DICT_GLOBALS or name.startswith(_METADATA_PREFIXES)


def _unwrap_prefix(sd: dict[str, torch.Tensor], want: set[str], path: Path) -> dict[str, torch.Tensor]:
    """`sd` under the key prefix (1-3 dotted parts, e.g. a LightningModule's `model.`) that matches the
    most of the model's keys, when one matches more than the keys as they are; other keys are left out
    (a loss's class weights, metrics) and named in the log. Two prefixes matching equally well (the
    weights and an EMA copy) are an error: which one to load is the user's choice."""
    def score(keys: Iterable[str]) -> int:
        return len(want.intersection(keys))

    def under(prefix: str) -> dict[str, str]:  # stripped key -> original key, for the keys under `prefix`
        out = {}
        for k in sd:
            if k.startswith(prefix):
                s = k[len(prefix):]
                for wrapper in ("module.", "_orig_mod."):  # as clean_state_dict strips them, in its order
                    s = s.removeprefix(wrapper)
                out[s] = k
        return out

    best, found = score(sd), {}
    if best == len(want):  # every key of the model is there as it is: nothing to unwrap
        return sd
    for key in sd:
        parts = key.split(".")
        for n in range(1, min(4, len(parts))):
            prefix = ".".join(parts[:n]) + "."
            if prefix not in found:
                found[prefix] = score(under(prefix))
    top = max(found.values(), default=0)
    if top <= best:
        return sd
    tied: dict[frozenset, str] = {}  # the original keys a prefix gives the model -> its shortest prefix
    for p in sorted((p for p, v in found.items() if v == top), key=len):
        tied.setdefault(frozenset(k for s, k in under(p).items() if s in want), p)
    tied = list(tied.values())  # `net.` and `net.module.` that give the same tensors are one candidate
    if len(tied) > 1:
        raise UserError(f"{path}: holds the model's weights under {len(tied)} prefixes ({', '.join(map(repr, tied))}); "
                        "re-save the state dict of the one you want")
    prefix = tied[0]
    kept = clean_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    rest = [k for k in sd if not k.startswith(prefix)]
    log(f"pretrained {path.name}: the weights under {prefix!r} ({len(kept)} tensors)"
        + (f"; left out {len(rest)} others: {', '.join(rest[:3])}" if rest else ""))
    return kept


def _reason(e: Exception) -> str:
    """The clause of torch's long weights_only message that says what was refused."""
    # e.g. "Unsupported global: GLOBAL print was not an allowed global by default" or
    # "Trying to load unsupported GLOBAL posix.mkdir whose module posix is blocked"
    hit = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
    return hit.removeprefix("WeightsUnpickler error: ").split(". ")[0].rstrip(".") or "refused by its unpickler"
