"""Model registry: the official CIFAR architectures of Tf-KD and torchvision models (`tv:<name>`).

Each CIFAR builder takes `(num_classes, width)` and returns a module whose state_dict has
exactly the keys (in order) of the official `model/*.py` definition, so released teacher
weights load with `load_state_dict(strict=True)` at width 1. `width` is a channel
multiplier for reduced-scale runs: shapes shrink, keys stay the same.
"""

from __future__ import annotations

import math
from typing import Callable

import torch.nn as nn

from tfkd_cli.errors import TfkdError
from tfkd_cli.models.densenet import densenet121
from tfkd_cli.models.googlenet import googlenet
from tfkd_cli.models.mobilenetv2 import mobilenetv2
from tfkd_cli.models.resnet import resnet18, resnet50
from tfkd_cli.models.resnext import resnext29_8x64d
from tfkd_cli.models.shufflenetv2 import shufflenetv2
from tfkd_cli.models.torchvision_models import build_torchvision, check_torchvision_name

__all__ = [
    "MODELS", "ALIASES", "TV_PREFIX", "canonical_name", "build_model", "model_names", "count_params",
    "is_torchvision",
]

TV_PREFIX = "tv:"

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "googlenet": googlenet,
    "densenet121": densenet121,
    "resnext29_8x64d": resnext29_8x64d,
}

# Official spellings (main.py model_version / teacher names) and other common ones.
ALIASES: dict[str, str] = {
    "mobilenet_v2": "mobilenetv2",
    "mobilenet-v2": "mobilenetv2",
    "shufflenet_v2": "shufflenetv2",
    "shufflenet-v2": "shufflenetv2",
    "resnext29": "resnext29_8x64d",
    "resnext29_8x64": "resnext29_8x64d",
    "resnext29-8x64d": "resnext29_8x64d",
    "densenet": "densenet121",
    "google_net": "googlenet",
}


def is_torchvision(name: str) -> bool:
    """True for `tv:<name>` (torchvision) model names."""
    return name.strip().lower().startswith(TV_PREFIX)


def model_names() -> list[str]:
    """The CIFAR registry names, sorted."""
    return sorted(MODELS)


def canonical_name(name: str) -> str:
    """Resolve aliases (case-insensitive) and check `tv:<name>`; TfkdError for unknown names."""
    key = name.strip().lower()
    if key.startswith(TV_PREFIX):
        return TV_PREFIX + check_torchvision_name(key[len(TV_PREFIX):].strip())
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise TfkdError(f"unknown model '{name}'; choose from: {', '.join(model_names())}, or tv:<torchvision name>")
    return key


def _check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise TfkdError(f"width must be a number > 0, got {width!r}")
    return float(width)


def build_model(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """Build a randomly initialised model by (alias or canonical) name."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise TfkdError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    width = _check_width(width)
    key = canonical_name(name)
    if key.startswith(TV_PREFIX):
        if width != 1.0:
            raise TfkdError(f"width {width:g} applies to CIFAR models only; torchvision model '{key}' needs width 1")
        return build_torchvision(key[len(TV_PREFIX):], num_classes)
    return MODELS[key](num_classes, width)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (the count the official code and README report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
