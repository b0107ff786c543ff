"""Hand-written ResNet-18/34/50/101/152 (He et al. 2015, https://arxiv.org/abs/1512.03385), variant v1.5.

v1.5 puts the stride 2 of a downsampling Bottleneck on its 3x3 conv rather than on the first 1x1 conv, as
torchvision and timm's default `resnetXX` do; NVIDIA measured ~0.5% better top-1 than v1 for ~5% fewer
images/s (https://catalog.ngc.nvidia.com/orgs/nvidia/resources/resnet_50_v1_5_for_pytorch).

Parameter and buffer names are torchvision's (`conv1 bn1 layer1..4 .downsample.0/.1 fc`), which timm's
resnet.py keeps too: those state-dict keys are a public API, so torchvision's and timm's weights load
here with `strict=True`. `scripts/crosscheck.py` and tests/models/test_resnet.py prove that outputs and
gradients then equal timm's. Methods follow timm's model interface (`forward_features`, `forward_head`,
`get_classifier`, `reset_classifier`, `num_features`) so the rest of the kit treats both alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1. No bias: the BatchNorm that follows has its own shift."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (channel projection), without bias for the same reason as `conv3x3`."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus the shortcut: the block of ResNet-18/34."""

    expansion = 1  # output channels = planes * expansion

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        # One in-place ReLU module reused: it holds no state, and in-place saves an activation-sized
        # allocation per call (BatchNorm's backward needs its input, not its output).
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma so the block starts as the identity (Goyal et al. 2017, sec. 5.1)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut  # in place, as torchvision and timm: one allocation fewer per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand by 4: the block of ResNet-50/101/152."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma so the block starts as the identity (Goyal et al. 2017, sec. 5.1)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet v1.5 with torchvision's parameter names and timm's model interface.

    Args:
        block: `BasicBlock` or `Bottleneck`.
        layers: number of blocks in each of the four stages, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs; 0 makes `fc` an identity (the model returns pooled features).
        in_chans: input channels, e.g. 1 for grayscale X-rays.
        drop_rate: dropout probability on the pooled features, before `fc`.
        zero_init_last: zero the last BN gamma of each residual branch (timm's default, hence ours).
    """

    # What the factory needs to adapt pretrained weights; the same keys as timm's `model.pretrained_cfg`.
    pretrained_cfg = {"first_conv": "conv1", "classifier": "fc"}

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        zero_init_last: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.inplanes = 64  # channels entering the next stage; `_make_layer` advances it

        # Stem: 7x7/2 conv then 3x3/2 max-pool, input H x W -> 64 x H/4 x W/4.
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Four stages; each after the first halves the resolution: H/4, H/8, H/16, H/32.
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 512 * block.expansion  # 512 for 18/34, 2048 for 50/101/152
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(zero_init_last)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        """One stage: the first block changes resolution/width (projection shortcut), the rest keep it."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Projection shortcut (option B of the paper), stride on the 1x1 as torchvision/timm.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        blocks_ = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks_ += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def init_weights(self, zero_init_last: bool = True) -> None:
        """Kaiming-normal (fan_out) convs as torchvision and timm; BN at gamma=1, beta=0; Linear at
        PyTorch's default, as both leave it."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def get_classifier(self) -> nn.Module:
        """The final classifier (`fc`): what the factory re-initialises and the warm-up trains alone."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace `fc` by a freshly initialised one with `num_classes` outputs (0: identity)."""
        self.num_classes = num_classes
        w = self.conv1.weight  # the new layer goes where the model is (device, dtype)
        self.fc = nn.Identity()
        if num_classes > 0:
            self.fc = nn.Linear(self.num_features, num_classes, device=w.device, dtype=w.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32), before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> pooled (B, C) if `pre_logits`, else logits (B, num_classes)."""
        # flatten rather than .view: it copies only if it must, so any memory format works.
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# The five depths are data: (block, blocks per stage), from Table 1 of the paper.
RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
