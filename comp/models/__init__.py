"""Models: the kit's own ResNets and any timm model behind one `create_model`; `create_mil_model` pools
any of them over the instances of a MIL row (comp.models.mil)."""

from comp.models.factory import (
    create_mil_model,
    create_model,
    input_norm,
    list_models,
    load_pretrained,
    read_state_dict,
    set_backbone_trainable,
)
from comp.models.mil import POOLS, MilModel
from comp.models.resnet import RESNETS, BasicBlock, Bottleneck, ResNet

__all__ = [
    "RESNETS",
    "BasicBlock",
    "Bottleneck",
    "POOLS",
    "MilModel",
    "ResNet",
    "create_mil_model",
    "create_model",
    "input_norm",
    "list_models",
    "load_pretrained",
    "read_state_dict",
    "set_backbone_trainable",
]
