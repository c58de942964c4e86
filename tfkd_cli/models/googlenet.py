"""CIFAR GoogLeNet (weiaicunzai/pytorch-cifar100 style), as in the official Tf-KD repo."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tfkd_cli.models._common import scale_channels as _scale


def _conv_bn_relu(cin: int, cout: int, k: int, eps: float = 1e-5) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout, eps=eps), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (for the 5x5) | 3x3 max-pool -> 1x1.

    Official quirk kept: the first BatchNorm after the 3x3 in the "5x5" branch is built as
    `BatchNorm2d(n5x5, n5x5)`, i.e. its eps is the (nominal) channel count, not 1e-5.
    """

    def __init__(self, cin: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
                 pool_proj: int, eps_5x5: float):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(cin, n1x1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(cin, n3x3red, 1), *_conv_bn_relu(n3x3red, n3x3, 3))
        self.b3 = nn.Sequential(
            *_conv_bn_relu(cin, n5x5red, 1),
            *_conv_bn_relu(n5x5red, n5x5, 3, eps=eps_5x5),
            *_conv_bn_relu(n5x5, n5x5, 3),
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(cin, pool_proj, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


# name: (n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj), in order; a max-pool precedes a4 and a5
_INCEPTIONS = {
    "a3": (64, 96, 128, 16, 32, 32),
    "b3": (128, 128, 192, 32, 96, 64),
    "a4": (192, 96, 208, 16, 48, 64),
    "b4": (160, 112, 224, 24, 64, 64),
    "c4": (128, 128, 256, 24, 64, 64),
    "d4": (112, 144, 288, 32, 64, 64),
    "e4": (256, 160, 320, 32, 128, 128),
    "a5": (256, 160, 320, 32, 128, 128),
    "b5": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """Matches `model/googlenet.py` (`GoogleNet`) of the official repo.

    Paper CIFAR-100 baseline 78.72% (78.15% in the Tf-KD_reg table). A 3x3 192-channel stem,
    Inception a3-b5 with stride-2 max-pools before a4 and a5, global pooling, Dropout2d(0.4)
    (official: channel dropout on the pooled N x 1024 x 1 x 1 map), Linear. `width` scales
    every channel count.
    """

    def __init__(self, num_classes: int = 100, width: float = 1.0):
        super().__init__()
        stem = _scale(192, width)
        self.prelayer = nn.Sequential(*_conv_bn_relu(3, stem, 3))
        cin = stem
        for name, spec in _INCEPTIONS.items():
            block = Inception(cin, *(_scale(n, width) for n in spec), eps_5x5=float(spec[4]))
            self.add_module(name, block)
            cin = block.out_channels
            if name == "b3":
                self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)  # same position as official
        self.dropout = nn.Dropout2d(p=0.4)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.prelayer(x)
        x = self.b3(self.a3(x))
        x = self.maxpool(x)
        x = self.e4(self.d4(self.c4(self.b4(self.a4(x)))))
        x = self.maxpool(x)
        x = self.b5(self.a5(x))
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.dropout(x).flatten(1)
        return self.linear(x)


def googlenet(num_classes: int = 100, width: float = 1.0) -> GoogLeNet:
    return GoogLeNet(num_classes, width)
