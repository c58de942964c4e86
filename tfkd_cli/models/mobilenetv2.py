"""CIFAR MobileNetV2 (weiaicunzai/pytorch-cifar100 style), as in the official Tf-KD repo."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from tfkd_cli.models._common import scale_channels as _scale


class LinearBottleNeck(nn.Module):
    """Inverted residual: 1x1 expand (x t), 3x3 depthwise, 1x1 linear projection.

    All convs have biases (official quirk). The identity is added when `residual` is set
    (stride 1 and equal nominal in/out channels).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, t: int, residual: bool):
        super().__init__()
        hidden = in_channels * t
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.add_identity = residual

    def forward(self, x):
        out = self.residual(x)
        if self.add_identity:
            out += x
        return out


# (repeat, nominal out channels, first stride, expansion t) for stage2..stage6
_STAGES = [(2, 24, 2, 6), (3, 32, 2, 6), (4, 64, 2, 6), (3, 96, 1, 6), (3, 160, 1, 6)]


class MobileNetV2(nn.Module):
    """Matches `model/mobilenetv2.py` of the official repo (paper CIFAR-100 baseline 68.38%).

    Official quirks kept: the stem is a 1x1 conv with padding=1 (32x32 -> 34x34, the border
    is bias-only), convs have biases, and the classifier is a 1x1 conv after global pooling.
    `width` scales every channel count (stem, stages, the 1280-channel head).
    """

    def __init__(self, num_classes: int = 100, width: float = 1.0):
        super().__init__()
        c = lambda n: _scale(n, width)  # noqa: E731
        self.pre = nn.Sequential(nn.Conv2d(3, c(32), 1, padding=1), nn.BatchNorm2d(c(32)), nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleNeck(c(32), c(16), 1, 1, residual=False)
        nominal_in = 16
        for i, (repeat, out, stride, t) in enumerate(_STAGES, start=2):
            blocks = []
            for j in range(repeat):
                s = stride if j == 0 else 1
                blocks.append(LinearBottleNeck(c(nominal_in), c(out), s, t, residual=s == 1 and nominal_in == out))
                nominal_in = out
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
        self.stage7 = LinearBottleNeck(c(160), c(320), 1, 6, residual=False)
        self.conv1 = nn.Sequential(nn.Conv2d(c(320), c(1280), 1), nn.BatchNorm2d(c(1280)), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(c(1280), num_classes, 1)

    def forward(self, x):
        x = self.pre(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.stage5(x)
        x = self.stage6(x)
        x = self.stage7(x)
        x = self.conv1(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.conv2(x).flatten(1)


def mobilenetv2(num_classes: int = 100, width: float = 1.0) -> MobileNetV2:
    return MobileNetV2(num_classes, width)
