"""CIFAR ShuffleNetV2 1x (weiaicunzai/pytorch-cifar100 style), as in the official Tf-KD repo."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tfkd_cli.models._common import scale_channels as _scale


def concat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`channel_shuffle(torch.cat([a, b], 1), groups=2)` in a single copy.

    Output channel 2i is a[:, i] and 2i+1 is b[:, i], exactly as the official
    cat -> view(N, 2, C/2, H, W) -> transpose(1, 2) -> view. If `b` (a fresh conv-branch
    output; `a` may be a channel slice) is channels_last, so is the result: the interleave is
    then done on NHWC views.
    """
    n, c, h, w = a.shape
    if b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous():
        out = torch.stack([a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)], dim=4)  # N,H,W,C,2
        return out.reshape(n, h, w, 2 * c).permute(0, 3, 1, 2)
    return torch.stack([a, b], dim=2).reshape(n, 2 * c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: downsampling (two branches on the full input, `shortcut` + `residual`)
    or basic (channel split; `residual` on the second half). Convs have biases (official)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        half = out_channels // 2
        if downsample:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, half, 1),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, half, 1),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(half, half, 1),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, stride=stride, padding=1, groups=half),
                nn.BatchNorm2d(half),
                nn.Conv2d(half, half, 1),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )

    def forward(self, x):
        if self.downsample:
            return concat_shuffle(self.shortcut(x), self.residual(x))
        half = x.shape[1] // 2
        return concat_shuffle(x[:, :half], self.residual(x[:, half:]))


class ShuffleNetV2(nn.Module):
    """Matches `model/shufflenetv2.py` (ratio 1) of the official repo (paper CIFAR-100 baseline 70.34%).

    3x3 stride-1 stem with BN and no ReLU (official), stages of 116/232/464 channels with
    4/8/4 units, 1x1 conv to 1024, global pooling, Linear. `width` scales every channel count;
    stage widths are kept even for the channel split.
    """

    def __init__(self, num_classes: int = 100, width: float = 1.0):
        super().__init__()
        stem = _scale(24, width)
        stages = [_scale(n, width, 2) for n in (116, 232, 464)]
        head = _scale(1024, width)
        self.pre = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), nn.BatchNorm2d(stem))
        self.stage2 = self._make_stage(stem, stages[0], 3)
        self.stage3 = self._make_stage(stages[0], stages[1], 7)
        self.stage4 = self._make_stage(stages[1], stages[2], 3)
        self.conv5 = nn.Sequential(nn.Conv2d(stages[2], head, 1), nn.BatchNorm2d(head), nn.ReLU(inplace=True))
        self.fc = nn.Linear(head, num_classes)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, repeat: int) -> nn.Sequential:
        # official: one stride-2 unit, then `repeat` basic units (4/8/4 units in all)
        units = [ShuffleUnit(in_channels, out_channels, 2, downsample=True)]
        units += [ShuffleUnit(out_channels, out_channels, 1, downsample=False) for _ in range(repeat)]
        return nn.Sequential(*units)

    def forward(self, x):
        x = self.pre(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def shufflenetv2(num_classes: int = 100, width: float = 1.0) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, width)
