"""Build a model by name, optionally load pretrained weights, and split it for a frozen-backbone warm-up.

Names: `resnet18` ... `resnet152` are the kit's own ResNets (comp/models/resnet.py); `timm/<name>` is any
timm model (`timm.list_models()`), built with `timm.create_model`. Both expose timm's interface
(`get_classifier`, `reset_classifier`, `forward_features`, `forward_head`, `pretrained_cfg`), which is all
the rest of this file relies on.

`pretrained` is either
  - a local weights file: torchvision or timm `.pth`/`.bin`/`.pt`, `.safetensors`, or a kit/timm training
    checkpoint (state dict under `model` or `state_dict`). Pickles are read with `weights_only=True`, so a
    file that carries code is refused rather than run;
  - a timm pretrained tag (`tv_in1k`, `a1_in1k`, ...; `timm`, `imagenet` or `default` for timm's default
    tag of the architecture), fetched from the Hugging Face hub by timm, which needs the internet.
Either way the classifier is re-initialised when its shape differs (another num_classes) and the first
conv is adapted to `in_chans` (1: the RGB filters summed), as timm does for its own pretrained weights.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models import adapt_input_conv, clean_state_dict, get_pretrained_cfg, split_model_name_tag
from torch import nn

from comp.errors import UserError
from comp.models.resnet import RESNETS, ResNet

TIMM_PREFIX = "timm/"
DEFAULT_TAGS = ("timm", "imagenet", "default")  # aliases for "timm's default pretrained tag"


def list_models() -> list[str]:
    """The kit's own model names; any timm model is also available as `timm/<name>`."""
    return list(RESNETS)


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build model `name` with `num_classes` outputs for `in_chans`-channel input.

    Args:
        name: a kit name (`list_models()`) or `timm/<timm model name>`.
        num_classes: classifier outputs (0: no classifier, the model returns pooled features).
        in_chans: input channels (1 for grayscale; pretrained RGB filters are summed).
        pretrained: None, a local weights file, or a timm pretrained tag (see the module docstring).
        drop_rate: dropout before the classifier.

    Raises:
        UserError: unknown name, missing or unsafe file, weights that do not fit, failed download.
    """
    if name.startswith(TIMM_PREFIX):
        if not timm.is_model(timm_name := name.removeprefix(TIMM_PREFIX)):
            raise UserError(f"model {name!r}: timm has no model {timm_name!r} (see timm.list_models())")
    elif name not in RESNETS:
        raise UserError(
            f"unknown model {name!r}: the kit's own are {', '.join(RESNETS)}; "
            f"timm models need the '{TIMM_PREFIX}' prefix, e.g. 'timm/efficientnet_b0'"
        )
    if not pretrained:  # None, or "" from a config
        return _build(name, num_classes, in_chans, drop_rate)
    if _is_tag(pretrained):
        return _create_from_hub(name, str(pretrained), num_classes, in_chans, drop_rate)
    model = _build(name, num_classes, in_chans, drop_rate)
    load_pretrained(model, read_state_dict(pretrained), source=os.fspath(pretrained))
    return model


def _build(name: str, num_classes: int, in_chans: int, drop_rate: float) -> nn.Module:
    """Randomly initialised model; `name` is already validated."""
    if name.startswith(TIMM_PREFIX):
        return timm.create_model(
            name.removeprefix(TIMM_PREFIX), pretrained=False, num_classes=num_classes, in_chans=in_chans,
            drop_rate=drop_rate,
        )
    block, layers = RESNETS[name]
    return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)


def _is_tag(pretrained: str | os.PathLike) -> bool:
    """timm tags are bare words (`tv_in1k`); anything with a dot or a slash, or an existing file, is a path."""
    s = os.fspath(pretrained)
    return not (os.path.exists(s) or "." in s or "/" in s or os.sep in s)


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: OSError covers socket and urllib errors, requests' RequestException and
    huggingface_hub's HTTP, offline-mode and LocalEntryNotFound errors (all OSError subclasses); the hub's
    EntryNotFoundError is not one. Anything else from timm.create_model is the kit's (or timm's) bug and
    is not dressed as a download failure."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import EntryNotFoundError

        errors.append(EntryNotFoundError)
    except ImportError:
        pass
    return tuple(errors)


NETWORK_ERRORS = _network_errors()


def _create_from_hub(name: str, tag: str, num_classes: int, in_chans: int, drop_rate: float) -> nn.Module:
    """Fetch timm's pretrained weights for `name` (tag `tag`) and return the model holding them."""
    arch = name.removeprefix(TIMM_PREFIX)
    if tag not in DEFAULT_TAGS:
        arch = f"{split_model_name_tag(arch)[0]}.{tag}"
    try:
        cfg = get_pretrained_cfg(arch)  # raises on a tag that timm does not know for this architecture
    except RuntimeError:
        cfg = None
    # Without a source timm would log a warning and return random weights: refuse instead.
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(split_model_name_tag(arch)[0] + ".*")]
        raise UserError(
            f"pretrained={tag!r}: timm has no such weights for {name!r}; its tags: {', '.join(tags) or 'none'}"
        )
    try:
        if name.startswith(TIMM_PREFIX):  # timm resets the classifier and adapts the first conv itself
            return timm.create_model(
                arch, pretrained=True, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate
            )
        source = timm.create_model(arch, pretrained=True)  # same keys as ours; 1000 classes, 3 channels
    except NETWORK_ERRORS as e:  # offline, no such file on the hub, a refused or cut connection
        raise UserError(
            f"pretrained={tag!r}: the weights {arch!r} could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "pass a local weights file path as pretrained instead"
        ) from None
    model = _build(name, num_classes, in_chans, drop_rate)
    load_pretrained(model, source.state_dict(), source=arch)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.safetensors` file or a `weights_only` torch pickle, unwrapping a
    training checkpoint (`model` or `state_dict` key) and DDP/compile prefixes (`module.`, `_orig_mod.`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            obj: Any = safetensors.torch.load_file(path, device="cpu")
        except Exception as e:  # SafetensorError: bad header, truncated file
            raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # a global outside torch's allow-list (code, a custom class)
            raise UserError(
                f"refusing to load {path}: it is not a plain weights file (weights_only=True: {_reason(e)}); "
                "re-save its state dict, or use .safetensors"
            ) from None
        except Exception as e:  # not a zip/pickle at all: truncated download, HTML error page, ...
            raise UserError(f"{path}: not a PyTorch weights file ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: not a state dict: {bad[0]!r} holds a {type(obj[bad[0]]).__name__}, not a tensor")
    return clean_state_dict(dict(obj))


def _reason(e: Exception) -> str:
    """The clause of torch's long weights_only message that says what was refused."""
    # e.g. "Unsupported global: GLOBAL print was not an allowed global by default" or
    # "Trying to load unsupported GLOBAL posix.mkdir whose module posix is blocked"
    hit = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
    return hit.removeprefix("WeightsUnpickler error: ").split(". ")[0].rstrip(".") or "refused by its unpickler"


def _names(value: str | Iterable[str] | None) -> list[str]:
    """timm's pretrained_cfg gives `first_conv`/`classifier` as a module name or a tuple of them."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _classifier_names(model: nn.Module) -> list[str]:
    """Module names of the classifier: from `pretrained_cfg`, and the module `get_classifier()` returns."""
    names = _names(getattr(model, "pretrained_cfg", {}).get("classifier"))
    head = model.get_classifier()
    names += [n for n, m in model.named_modules() if m is head and n not in names]
    return names


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def load_pretrained(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load `state_dict` into `model`, strict except for the classifier; returns the classifier keys
    left at their fresh initialisation (another num_classes, or the source had none).

    The first conv is adapted to the model's input channels with timm's `adapt_input_conv`
    (1 channel: the filters summed over R, G, B, which keeps the response to a gray image).
    """
    own = model.state_dict()
    sd = dict(state_dict)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    for conv in _names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in sd and key in own and sd[key].ndim == 4 and sd[key].shape[1] != own[key].shape[1]:
            sd[key] = adapt_input_conv(own[key].shape[1], sd[key], base_chans=sd[key].shape[1])

    head = _classifier_names(model)

    def in_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in head)

    for k in [k for k in sd if in_head(k) and (k not in own or sd[k].shape != own[k].shape)]:
        del sd[k]  # another num_classes (or none): the model keeps its freshly initialised classifier
    fresh = [k for k in own if k not in sd and in_head(k)]

    missing = [k for k in own if k not in sd and not in_head(k)]
    if missing:
        raise UserError(f"pretrained {source}: missing keys for this model: {_few(missing)}")
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise UserError(f"pretrained {source}: keys this model does not have: {_few(unexpected)}")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if v.shape != own[k].shape]
    if shapes:
        raise UserError(f"pretrained {source}: shapes differ from the model's: {_few(shapes)}")
    model.load_state_dict(sd, strict=not fresh)  # every key checked above; only `fresh` may be absent
    return fresh


# --- frozen-backbone warm-up ------------------------------------------------------------------------
# The training loop trains only the classifier for `model.freeze_epochs` epochs, then everything, the
# backbone at `lr * model.backbone_lr_mult` (comp.train.optim.param_groups).


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (`False`) or unfreeze every parameter outside `model.get_classifier()`.

    While frozen, the backbone's BatchNorm layers are also put in eval mode, so their running statistics
    stay those the pretrained weights were trained with: the warm-up then fits the head to a fixed
    feature extractor (a linear probe), rather than to features drifting with small, noisy batch
    statistics (Keras' transfer-learning guide keeps BN in inference mode for the same reason).
    `model.train()` puts them back in train mode, so call this after it, every epoch.
    """
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(trainable)
    head_modules = {id(m) for m in model.get_classifier().modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules:
            m.train(model.training and trainable)
