"""CIFAR DenseNet-BC 121 (weiaicunzai/pytorch-cifar100 style), as in the official Tf-KD repo."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """DenseNet-B layer: BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k); output = cat(input, new)."""

    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        inner = 4 * growth_rate
        self.bottle_neck = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.bottle_neck(x)], 1)


class Transition(nn.Module):
    """BN - 1x1 conv (compression) - 2x2 average pool (no ReLU, as in the official code)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.down_sample = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )

    def forward(self, x):
        return self.down_sample(x)


class DenseNet(nn.Module):
    """Matches `model/densenet.py` (`densenet121`) of the official repo (paper CIFAR-100 baseline 79.04%).

    DenseNet-BC, blocks [6, 12, 24, 16], growth 32, reduction 0.5, 3x3 stem with 2k channels,
    final BN-ReLU, global pooling, Linear. `width` scales the growth rate (round half-up,
    at least 1); every other channel count follows from it as in the official code.
    """

    def __init__(self, nblocks: list[int], growth_rate: int = 32, reduction: float = 0.5,
                 num_classes: int = 100, width: float = 1.0):
        super().__init__()
        k = max(1, int(growth_rate * width + 0.5))
        channels = 2 * k
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        last = len(nblocks) - 1
        for i, n in enumerate(nblocks):
            # official module names: dense_block_layer_0..2, transition_layer_0..2, dense_block3
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"bottle_neck_layer_{j}", Bottleneck(channels + j * k, k))
            channels += n * k
            if i < last:
                self.features.add_module(f"dense_block_layer_{i}", block)
                out = int(reduction * channels)
                self.features.add_module(f"transition_layer_{i}", Transition(channels, out))
                channels = out
            else:
                self.features.add_module(f"dense_block{i}", block)
        self.features.add_module("bn", nn.BatchNorm2d(channels))
        self.features.add_module("relu", nn.ReLU(inplace=True))
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.features(self.conv1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def densenet121(num_classes: int = 100, width: float = 1.0) -> DenseNet:
    return DenseNet([6, 12, 24, 16], growth_rate=32, num_classes=num_classes, width=width)
