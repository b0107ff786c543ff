"""Build a model by name, optionally load pretrained weights, and split it for a frozen-backbone warm-up.

Names: `resnet18` ... `resnet152` are the kit's own ResNets (comp/models/resnet.py); `timm/<name>` is any
timm model (`timm.list_models()`), built with `timm.create_model`. Both expose timm's interface
(`get_classifier`, `reset_classifier`, `forward_features`, `forward_head`, `pretrained_cfg`), which is all
the rest of this file relies on. `create_mil_model` wraps one such backbone (num_classes=0) in a
comp.models.mil.MilModel that pools it over the N images of a MIL row.

`pretrained` is either
  - a local weights file or folder in the layout torchvision, timm, Lightning (`.ckpt`), Hugging Face
    (`pytorch_model.bin`, `model.safetensors`, a hub folder) or the kit write (comp/models/weights.py).
    Pickles are read with `weights_only=True`, so a file that carries code is refused rather than run;
  - a timm pretrained tag (`tv_in1k`, `a1_in1k`, ...; `timm`, `imagenet` or `default` for timm's default
    tag of the architecture), fetched from the Hugging Face hub by timm, which needs the internet.
Either way the classifier is re-initialised when its shape differs (another num_classes) and the first
conv is adapted to `in_chans` (1: the RGB filters summed), as timm does for its own pretrained weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import timm
import torch
from timm.models import adapt_input_conv, get_pretrained_cfg, split_model_name_tag
from torch import nn

from comp.errors import UserError
from comp.models.mil import MilModel, check_pool
from comp.models.resnet import RESNETS, ResNet
from comp.models.weights import read_state_dict

TIMM_PREFIX = "timm/"
DEFAULT_TAGS = ("timm", "imagenet", "default")  # aliases for "timm's default pretrained tag"


def list_models() -> list[str]:
    """The kit's own model names; any timm model is also available as `timm/<name>`."""
    return list(RESNETS)


def check_model_name(name: str) -> str:
    """`name` when it names a model create_model can build (a kit ResNet, or a timm model under `timm/`),
    checked without building anything (a config check at load time).

    Raises:
        UserError: an unknown name, with the choices.
    """
    if name.startswith(TIMM_PREFIX):
        if not timm.is_model(timm_name := name.removeprefix(TIMM_PREFIX)):
            raise UserError(f"model {name!r}: timm has no model {timm_name!r} (see timm.list_models())")
    elif name not in RESNETS:
        raise UserError(
            f"unknown model {name!r}: the kit's own are {', '.join(RESNETS)}; "
            f"timm models need the '{TIMM_PREFIX}' prefix, e.g. 'timm/efficientnet_b0'"
        )
    return name


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
    check_model_name(name)
    if not pretrained:  # None, or "" from a config
        return _build(name, num_classes, in_chans, drop_rate)
    if _is_tag(pretrained):
        return _create_from_hub(name, str(pretrained), num_classes, in_chans, drop_rate)
    model = _build(name, num_classes, in_chans, drop_rate)
    load_pretrained(model, read_state_dict(pretrained, model.state_dict()), source=os.fspath(pretrained))
    return model


def create_mil_model(
    name: str,
    num_logits: int,
    pool: str,
    in_chans: int = 3,
    pretrained: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
) -> MilModel:
    """A multiple-instance model (comp.models.mil.MilModel): backbone `name` built by `create_model` with
    num_classes=0, so `pretrained` goes through the same loader and lands in the backbone (a kit MIL
    checkpoint too: its `backbone.*` weights, read_state_dict picks them by prefix), then the pool and a
    fresh head with `num_logits` outputs. Input (B, N, in_chans, H, W); output (B, num_logits).

    Args:
        name: backbone, as for `create_model`.
        num_logits: head outputs.
        pool: mean | max | attention | gru | transformer (mil.pool).
        in_chans: input channels of each instance.
        pretrained: the backbone's weights, as for `create_model`.
        drop_rate: dropout before the head (the backbone's own dropout is off: one dropout, after the pool).

    Raises:
        UserError: an unknown pool (checked before anything is built or downloaded), and as `create_model`.
    """
    check_pool(pool)
    backbone = create_model(name, 0, in_chans=in_chans, pretrained=pretrained, drop_rate=0.0)
    return MilModel(backbone, num_logits, pool, drop_rate=drop_rate)


def input_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) per RGB channel (0..1 scale) the model's inputs are normalised with: what its
    pretrained weights were trained with, from timm's `resolve_model_data_config` (ViT augreg, Inception,
    EVA and others use 0.5/0.5, not ImageNet's statistics). The kit's ResNets carry no mean/std in their
    pretrained_cfg and get timm's default, ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
    A MilModel's is its backbone's."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)  # a MilModel carries its backbone's pretrained_cfg
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


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
