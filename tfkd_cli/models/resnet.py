"""CIFAR ResNet-18 / ResNet-50 (kuangliu/pytorch-cifar style), as in the official Tf-KD repo.

3x3 stride-1 stem, no max-pool, stages of 64-128-256-512 planes, global average pooling,
Linear classifier. The official forward also computes intermediate pooled features that it
never returns; this one returns the logits only (same numbers).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from tfkd_cli.models._common import scale_channels as _scale


class BasicBlock(nn.Module):
    """Two 3x3 convs; projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if project:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x) if len(self.shortcut) else x
        return F.relu(out, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, project: bool):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if project:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x) if len(self.shortcut) else x
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    """CIFAR ResNet; matches `model/resnet.py` (`ResNet18`, `ResNet50`) of the official repo.

    Paper CIFAR-100 baselines: ResNet18 75.87%, ResNet50 78.16%.
    `width` scales every channel count; the block structure and state_dict keys stay the same.
    """

    def __init__(self, block: type, num_blocks: list[int], num_classes: int = 100, width: float = 1.0):
        super().__init__()
        stem = _scale(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        # Track nominal (width-1) and scaled channel counts: the nominal ones decide the
        # structure (projection shortcuts), so every width has the official keys.
        self._nominal_in, self._in = 64, stem
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1, width)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2, width)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2, width)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2, width)
        self.linear = nn.Linear(self._in, num_classes)
        del self._nominal_in, self._in

    def _make_layer(self, block: type, planes: int, n: int, stride: int, width: float) -> nn.Sequential:
        layers = []
        scaled = _scale(planes, width)
        for s in [stride] + [1] * (n - 1):
            project = s != 1 or self._nominal_in != block.expansion * planes
            layers.append(block(self._in, scaled, s, project))
            self._nominal_in, self._in = block.expansion * planes, block.expansion * scaled
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # official: avg_pool2d(out, 4), i.e. over the whole 4x4 map of a 32x32 input; pooling over
        # the whole map is the same op there (bit for bit) and also accepts other input sizes
        out = F.avg_pool2d(out, out.shape[-2:]).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 100, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


def resnet50(num_classes: int = 100, width: float = 1.0) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)
