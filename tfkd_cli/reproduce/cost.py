"""Rough time estimates for `reproduce --dry-run`: FLOPs / measured throughput.

FLOPs are counted exactly (torch's FlopCounterMode on one 32x32 or 224x224 image); the
achieved FLOP rates per model family were measured with tfkd's own training step, so the
estimate is as good as the machine is similar to the one we measured on:
  cpu:  2-core Intel Xeon VM (the CI machine), torch 2.14.1, channels_last off, batch 128
  cuda: one H100, bf16 autocast (see benchmarks/README.md)
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from tfkd_cli.models import build_model, canonical_name
from tfkd_cli.recipe import Recipe

# Achieved GFLOP/s of a training step (forward + backward + SGD, counted as 3x forward) and
# of an inference forward (teacher, evaluation), per device; "default" for other models.
RATES = {
    "cpu": {
        "train": {"resnet18": 370, "resnet50": 60, "mobilenetv2": 75, "shufflenetv2": 40, "googlenet": 180,
                  "densenet121": 180, "resnext29_8x64d": 100, "default": 150},
        "infer": {"resnet18": 440, "resnet50": 360, "mobilenetv2": 150, "shufflenetv2": 120, "googlenet": 260,
                  "densenet121": 230, "resnext29_8x64d": 270, "default": 250},
    },
    "cuda": {"train": {"default": 60_000}, "infer": {"default": 150_000}},
}

DATASET_SIZES = {  # train, test images, image side
    "cifar100": (50_000, 10_000, 32), "cifar10": (50_000, 10_000, 32), "cifar-layout": (50_000, 10_000, 32),
    "digits": (1_437, 360, 32), "tiny-imagenet": (100_000, 10_000, 64), "imagenet": (1_281_167, 50_000, 224),
}


@functools.lru_cache(maxsize=None)
def forward_flops(model: str, width: float, num_classes: int, side: int) -> float:
    """FLOPs of one forward pass of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = build_model(model, num_classes=num_classes, width=width)
    with FlopCounterMode(display=False) as fc:
        net(torch.empty(1, 3, side, side, device="meta"))
    return float(fc.get_total_flops())


def _rate(device: str, kind: str, model: str) -> float:
    table = RATES["cuda" if device.startswith("cuda") else "cpu"][kind]
    return table.get(canonical_name(model), table["default"]) * 1e9


def estimate_seconds(r: Recipe, device: str = "cpu", teacher: Optional[Recipe] = None) -> float:
    """Estimated wall time of a whole run of recipe `r` (with its teacher run's recipe) on `device`."""
    n_train, n_test, side = DATASET_SIZES.get(r.data.dataset, (50_000, 10_000, 32))
    classes = {"cifar10": 10, "digits": 10, "tiny-imagenet": 200, "imagenet": 1000}.get(r.data.dataset, 100)
    if r.data.per_class:
        n_train = r.data.per_class * classes
    f = forward_flops(r.model, r.width, classes, side)
    per_epoch = n_train * 3 * f / _rate(device, "train", r.model) + n_test * f / _rate(device, "infer", r.model)
    if r.teacher.path and r.method in ("kd", "kd_self"):
        tm = r.teacher.model or (teacher.model if teacher else r.model)
        tw = r.teacher.width or (teacher.width if teacher else r.width)
        per_epoch += n_train * forward_flops(tm, tw, classes, side) / _rate(device, "infer", tm)
    return per_epoch * r.train.epochs
