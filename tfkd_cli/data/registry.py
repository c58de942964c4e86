"""The dataset registry: one `DatasetInfo` record per dataset, everything tfkd knows about it.

A new dataset is a reader in `readers` or a module of its own (`cifar`, `imagefolder`) and one record here; the CLI's
`--dataset` help, the cost estimate (train/test sizes) and the reference transforms read it.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from tfkd_cli.data.imagefolder import build_folder, read_folder
from tfkd_cli.data.info import DatasetInfo
from tfkd_cli.data.cifar import _read_cifar10, _read_cifar100, _read_cifar_layout
from tfkd_cli.data.readers import (
    CIFAR100_MEAN, CIFAR100_STD, DIGITS_MEAN, DIGITS_STD, DIGITS_TEST, DIGITS_TRAIN, IMAGENET_MEAN,
    IMAGENET_STD, SPLITS, TINY_MEAN, TINY_STD, FolderSplit, _err, _read_digits, _read_imagenet, _read_tiny_imagenet,
)

__all__ = ["DatasetInfo", "DATASETS", "get_info", "read_split", "scan_folder_split"]

_CIFAR_TRAIN = (("crop", 4), ("flip",), ("rotate", 15.0))  # official CIFAR transform_train

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo(name="cifar100", title="CIFAR-100", reader=_read_cifar100, num_classes=100, image_size=32,
                mean=CIFAR100_MEAN, std=CIFAR100_STD, num_train=50_000, num_test=10_000,
                train_transform=_CIFAR_TRAIN),
    DatasetInfo(name="cifar10", title="CIFAR-10", reader=_read_cifar10, num_classes=10, image_size=32,
                mean=CIFAR100_MEAN, std=CIFAR100_STD, num_train=50_000, num_test=10_000,
                train_transform=_CIFAR_TRAIN),
    DatasetInfo(name="cifar-layout", title="CIFAR-layout", reader=_read_cifar_layout, num_classes=None,
                image_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD, num_train=50_000, num_test=5_000,
                train_transform=_CIFAR_TRAIN),
    DatasetInfo(name="digits", title="digits", reader=_read_digits, num_classes=10, image_size=32,
                mean=DIGITS_MEAN, std=DIGITS_STD, num_train=DIGITS_TRAIN, num_test=DIGITS_TEST,
                train_transform=_CIFAR_TRAIN, needs_root=False),
    DatasetInfo(name="tiny-imagenet", title="Tiny-ImageNet", reader=_read_tiny_imagenet, num_classes=200,
                image_size=64, mean=TINY_MEAN, std=TINY_STD, num_train=100_000, num_test=10_000,
                train_transform=(("rotate", 20.0), ("flip",)), in_memory=False),
    DatasetInfo(name="imagenet", title="ImageNet", reader=_read_imagenet, num_classes=1000, image_size=224,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, num_train=1_281_167, num_test=50_000,
                train_transform=(("resized_crop", 224), ("flip",)),
                test_transform=(("resize", 256), ("center_crop", 224)), in_memory=False),
    # classes, size and mean/std come from the folder (imagefolder.folder_info); the sizes here
    # are a CIFAR-sized stand-in for cost estimates only
    DatasetInfo(name="folder", title="image folder", reader=read_folder, num_classes=None, image_size=32,
                mean=CIFAR100_MEAN, std=CIFAR100_STD, num_train=50_000, num_test=10_000,
                train_transform=(("crop", 4), ("flip",), ("rotate", 15.0)), build=build_folder),
)}


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise _err(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}") from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise _err(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")


def read_split(name: str, root: str | Path | None = None, split: str = "test", *, download: bool = False
               ) -> tuple[Tensor, Tensor, list[str]]:
    """Read one split of an in-memory dataset: (uint8 N x 3 x H x W, int64 labels, class names)."""
    info = get_info(name)
    _check_split(split)
    if not info.in_memory:
        raise _err(f"read_split reads in-memory datasets ({', '.join(k for k, v in DATASETS.items() if v.in_memory)}); "
                   f"{name} is a folder dataset: use scan_folder_split or build_data")
    return info.reader(root, split, download)


def scan_folder_split(name: str, root: str | Path | None = None, split: str = "test", *, download: bool = False) -> FolderSplit:
    """List the (path, label) samples of one split of a folder dataset."""
    info = get_info(name)
    _check_split(split)
    if info.in_memory:
        raise _err(f"{name} is an in-memory dataset: use read_split")
    return info.reader(root, split, download)
