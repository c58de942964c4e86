"""A dataset record's transform steps (`DatasetInfo.train_transform` / `test_transform`) as the
official torchvision PIL transforms, then ToTensor and Normalize. The folder DataLoader path
(`folder`) builds its transforms here from the record it is given; `reference` adds the
lookup by dataset name."""

from __future__ import annotations

from torchvision import transforms as T

from tfkd_cli.data.info import DatasetInfo

__all__ = ["train_transform", "test_transform"]


def _steps(info, steps: tuple[tuple, ...]) -> list:
    """The registry's transform description (`DatasetInfo.train_transform`) as torchvision transforms."""
    build = {
        "crop": lambda padding: T.RandomCrop(info.image_size, padding=padding),
        "flip": lambda: T.RandomHorizontalFlip(),
        "rotate": lambda degrees: T.RandomRotation(degrees),
        "resized_crop": lambda size: T.RandomResizedCrop(size),
        "resize": lambda size: T.Resize(size),
        "center_crop": lambda size: T.CenterCrop(size),
    }
    return [build[name](*args) for name, *args in steps]


def train_transform(info: DatasetInfo) -> T.Compose:
    """The record's train steps, then ToTensor, Normalize(mean, std)."""
    return T.Compose([*_steps(info, info.train_transform), T.ToTensor(), T.Normalize(info.mean, info.std)])


def test_transform(info: DatasetInfo) -> T.Compose:
    """The record's test steps (none for CIFAR-style), then ToTensor, Normalize(mean, std)."""
    return T.Compose([*_steps(info, info.test_transform), T.ToTensor(), T.Normalize(info.mean, info.std)])
