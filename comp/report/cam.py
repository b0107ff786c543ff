"""Grad-CAM (Selvaraju et al., ICCV 2017) of the kit's models, from the `grad-cam` package
(pytorch-grad-cam): `grad_cam` for single images, `instance_cams` for MIL rows (comp.models.mil), and
`overlay` to draw a map over its image. comp.report.explain uses them for its review sheets.

The CAM layer is the output of `model.forward_features`, the last feature map before global pooling, for
the kit's ResNets (their `layer4`) and timm models alike (`cam_target`); token maps (ViT) and NHWC maps
(Swin) are reshaped to (B, C, h, w). A MIL model's CAM is taken through its full forward pass, so it
explains the pooled row prediction: the row's N instances go through the backbone as one batch, the CAM
layer is the backbone's feature map, and the gradient of the row's logit reaches every instance through the
pool. `top_instances` picks those that weigh most (`MilModel.instance_weights`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from comp.errors import UserError
from comp.models.mil import MilModel

TOP_INSTANCES = 4  # MIL rows: the instances shown per row, those that weigh most in the pooled feature


class _Split(nn.Module):
    """`model` as forward_head(features(forward_features(x))): `features` (an Identity) is the CAM layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.features = model, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.features(self.model.forward_features(x)))


class _MilRow(nn.Module):
    """A MIL model over ONE row's instances: (N, C, H, W) -> the row's logits (1, num_logits), the pooled
    prediction. With `split` (CNNs, NHWC and pooled-token maps), the backbone's feature map of the N
    instances passes through `features` (an Identity, the CAM layer) into the pool and head."""

    def __init__(self, model: MilModel, split: bool = True):
        super().__init__()
        self.model, self.split, self.features = model, split, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return self.model(x.unsqueeze(0))
        return self.model.forward_head(self.features(self.model.backbone.forward_features(x)).unsqueeze(0))


def _to_nchw(model: nn.Module):
    """Grad-CAM's reshape_transform for `model`'s feature map: (B, C, h, w) from tokens or NHWC."""
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 3:  # (B, prefix + h*w, C) tokens: a ViT
            t = t[:, prefix:]
            side = int(round(t.shape[1] ** 0.5))
            if side * side != t.shape[1]:
                raise UserError(f"Grad-CAM: {t.shape[1]} patch tokens do not form a square grid")
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
        return t.permute(0, 3, 1, 2) if nhwc else t

    return reshape


def cam_target(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(module to call, layer whose output Grad-CAM weighs) for `model`.

    The output of `forward_features`, the last feature map before global pooling (the kit's ResNets: their
    `layer4`; timm CNNs, ConvNeXt, Swin alike). A model that pools its class token (timm ViT/DeiT,
    `global_pool='token'`) passes no gradient to the patch tokens there, so the map would be all zero: for
    those the last block's `norm1`, where attention still mixes patches into the class token (the choice of
    pytorch-grad-cam's ViT tutorial)."""
    if getattr(model, "global_pool", None) == "token" and hasattr(model, "blocks"):
        return model, model.blocks[-1].norm1
    split = _Split(model).eval()
    return split, split.features


class _Logit:
    """A Grad-CAM target: `sign` times logit `index` of each image (pytorch-grad-cam calls it per image)."""

    def __init__(self, index: int, sign: int = 1):
        self.index, self.sign = index, sign

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        out = model_output[self.index] if model_output.ndim == 1 else model_output[:, self.index]
        return self.sign * out


def grad_cam(model: nn.Module, x: torch.Tensor, targets: list[int], signs: list[int] | None = None) -> np.ndarray:
    """(B, H, W) Grad-CAM maps in [0, 1] of normalised input `x` (B, C, H, W) for logit `targets[b]`
    (times `signs[b]`, default +1: -1 explains the negative class of a one-logit binary model), at the
    layer `cam_target` picks. For the kit's ResNets that is `layer4` (tested equal)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    signs = signs or [1] * len(targets)
    call, layer = cam_target(model)
    cam = GradCAM(model=call, target_layers=[layer], reshape_transform=_to_nchw(model))
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) if s == 1 else _Logit(int(t), s)
                                            for t, s in zip(targets, signs, strict=True)])
    finally:
        cam.activations_and_grads.release()  # not `with`: its __exit__ swallows IndexError


def instance_cams(model: MilModel, x: torch.Tensor, targets: list[int],
                  signs: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of MIL rows: (B, N, H, W) maps in [0, 1] of normalised rows `x` (B, N, C, H, W), each row's
    maps for its logit `targets[b]` (times `signs[b]`, as `grad_cam`) of the pooled prediction, and the
    (B, N) instance weights of that same forward pass (`MilModel.instance_weights`).

    One row at a time: its N instances are Grad-CAM's batch (`_MilRow`), the gradient of the row's logit
    reaching each instance's feature map through the pool. pytorch-grad-cam scales each instance's map to
    [0, 1] on its own (its scale_cam_image), so the maps show where in an instance, and the weights how much
    each instance, counted.

    Raises:
        ValueError: `model` is not a MilModel or `x` is not 5-D (the kit's bug).
    """
    from pytorch_grad_cam import GradCAM

    if not isinstance(model, MilModel) or x.ndim != 5:
        raise ValueError(f"instance_cams: a MilModel and (B, N, C, H, W) rows, got {type(model).__name__} "
                         f"and {tuple(x.shape)}")
    signs = signs or [1] * len(targets)
    backbone = model.backbone
    if getattr(backbone, "global_pool", None) == "token" and hasattr(backbone, "blocks"):
        call, layer = _MilRow(model, split=False).eval(), backbone.blocks[-1].norm1  # as cam_target
    else:
        call = _MilRow(model).eval()
        layer = call.features
    cam = GradCAM(model=call, target_layers=[layer], reshape_transform=_to_nchw(backbone))
    maps, weights = [], []
    try:
        for b, (t, s) in enumerate(zip(targets, signs, strict=True)):
            maps.append(cam(input_tensor=x[b], targets=[_Logit(int(t), int(s))]))
            weights.append(model.instance_weights[0].float().cpu().numpy().copy())
    finally:
        cam.activations_and_grads.release()
    return np.stack(maps), np.stack(weights)


def top_instances(weights: np.ndarray, k: int = TOP_INSTANCES) -> np.ndarray:
    """Indices of the `k` largest of the (N,) `weights`, largest first; ties (uniform weights) in index
    order (a stable sort), so a mean, gru or transformer pool shows its first instances."""
    return np.argsort(-np.asarray(weights), kind="stable")[:k]


def overlay(img: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image with the (H, W) map in [0, 1] laid over it as a jet heat map."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(img.astype(np.float32) / 255, cam, use_rgb=True, image_weight=0.55)
