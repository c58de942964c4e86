"""Adapter for torchvision classification models (`tv:<name>`), e.g. for ImageNet runs."""

from __future__ import annotations

import functools

import torch.nn as nn
import torchvision.models

from tfkd_cli.errors import TfkdError

# Models with auxiliary heads: build without them so that forward returns logits only, and
# pass init_weights explicitly (torchvision warns when it is left at None).
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """The classification model names torchvision knows (not detection/segmentation/video)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def check_torchvision_name(name: str) -> str:
    """Return `name` if torchvision has a classification model of that name, else TfkdError."""
    if name not in torchvision_names():
        raise TfkdError(
            f"unknown torchvision model '{name}'; see torchvision.models.list_models(module=torchvision.models)"
        )
    return name


def build_torchvision(name: str, num_classes: int) -> nn.Module:
    """`torchvision.models.get_model(name, weights=None, num_classes=num_classes)`, randomly initialised."""
    check_torchvision_name(name)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **_EXTRA_KWARGS.get(name, {}))
