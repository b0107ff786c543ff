"""Models: the kit's own ResNets and any timm model behind one `create_model`."""

from comp.models.factory import (
    create_model,
    input_norm,
    list_models,
    load_pretrained,
    read_state_dict,
    set_backbone_trainable,
)
from comp.models.resnet import RESNETS, BasicBlock, Bottleneck, ResNet

__all__ = [
    "RESNETS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "create_model",
    "input_norm",
    "list_models",
    "load_pretrained",
    "read_state_dict",
    "set_backbone_trainable",
]
