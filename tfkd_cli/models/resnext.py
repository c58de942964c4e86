"""CIFAR ResNeXt-29 8x64d (prlz77/ResNeXt.pytorch), as in the official Tf-KD repo."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch.nn import init
from tfkd_cli.models._common import scale_channels as _scale


class ResNeXtBottleneck(nn.Module):
    """ResNeXt bottleneck type C: 1x1 reduce to D, 3x3 grouped conv (cardinality groups), 1x1 expand."""

    def __init__(self, in_channels: int, out_channels: int, inner: int, stride: int, cardinality: int,
                 project: bool):
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_conv = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if project:
            self.shortcut.add_module("shortcut_conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn_reduce(self.conv_reduce(x)), inplace=True)
        out = F.relu(self.bn(self.conv_conv(out)), inplace=True)
        out = self.bn_expand(self.conv_expand(out))
        out += self.shortcut(x) if len(self.shortcut) else x
        return F.relu(out, inplace=True)


class CifarResNeXt(nn.Module):
    """Matches `model/resnext.py` (`CifarResNeXt(cardinality=8, depth=29)`, widen_factor 4) of the
    official repo (paper CIFAR-100 baseline 81.03%).

    Stages of 256/512/1024 channels, 3 bottlenecks each, inner width D = cardinality *
    out / widen_factor (group width 64). Official init kept: Kaiming-normal (fan_out) convs,
    Kaiming-normal (fan_in) classifier, zero biases, unit BN weights. The official
    `avg_pool2d(x, 8, 1)` is an average over the whole 8x8 map of a 32x32 input; this pools
    over the whole map whatever its size (identical on 32x32, and other sizes work).
    `width` scales every channel count; D stays a multiple of the cardinality.
    """

    def __init__(self, cardinality: int = 8, depth: int = 29, num_classes: int = 100, widen_factor: int = 4,
                 width: float = 1.0):
        super().__init__()
        block_depth = (depth - 2) // 9
        nominal = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        chans = [_scale(c, width) for c in nominal]
        self.conv_1_3x3 = nn.Conv2d(3, chans[0], 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(chans[0])
        for s in range(1, 4):
            stage = nn.Sequential()
            inner = _scale(cardinality * nominal[s] // widen_factor, width, cardinality)
            for b in range(block_depth):
                first = b == 0
                stage.add_module(f"stage_{s}_bottleneck_{b}", ResNeXtBottleneck(
                    chans[s - 1] if first else chans[s], chans[s], inner,
                    stride=(1 if s == 1 else 2) if first else 1, cardinality=cardinality,
                    project=first and nominal[s - 1] != nominal[s]))
            self.add_module(f"stage_{s}", stage)
        self.classifier = nn.Linear(chans[3], num_classes)
        self._official_init()

    def _official_init(self) -> None:
        # Same calls in the same order as the official constructor, so the same seed gives the
        # same weights: classifier first, then every conv weight (state_dict order).
        init.kaiming_normal_(self.classifier.weight)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                init.ones_(module.weight)
                init.zeros_(module.bias)
        init.zeros_(self.classifier.bias)

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)), inplace=True)
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        # official: avg_pool2d(x, 8, 1) on the 8x8 map of a 32x32 input (same op, bit for bit)
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)
        return self.classifier(x)


def resnext29_8x64d(num_classes: int = 100, width: float = 1.0) -> CifarResNeXt:
    return CifarResNeXt(cardinality=8, depth=29, num_classes=num_classes, widen_factor=4, width=width)
