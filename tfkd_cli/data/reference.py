"""The official data pipeline, as torchvision PIL transforms (data_loader.py of the official repo).

Used for the folder datasets' DataLoader path, by the benchmark that times "the official loop"
(PIL transforms in a DataLoader) against the in-memory fast path, and by the distribution test.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from tfkd_cli.data.registry import get_info
from tfkd_cli.data.transforms import test_transform, train_transform

__all__ = ["official_train_transform", "official_test_transform", "ReferenceDataset"]


def _info(name_or_info):
    """A registry record, by name or as given (a folder dataset's record is built per run)."""
    return get_info(name_or_info) if isinstance(name_or_info, str) else name_or_info


def official_train_transform(name: str) -> T.Compose:
    """The dataset's official train transform, then ToTensor, Normalize. CIFAR-style:
    RandomCrop(32, padding=4), RandomHorizontalFlip(), RandomRotation(15); tiny-imagenet:
    RandomRotation(20), RandomHorizontalFlip(0.5) (no crop); imagenet: RandomResizedCrop(224),
    RandomHorizontalFlip() (the registry, `registry.DATASETS`, holds the steps). `name` may be a
    DatasetInfo record itself."""
    return train_transform(_info(name))


def official_test_transform(name: str) -> T.Compose:
    """ToTensor + Normalize (imagenet: Resize(256), CenterCrop(224) first); `name` may be a record."""
    return test_transform(_info(name))


class ReferenceDataset(Dataset):
    """uint8 N x C x H x W images + labels -> (transform(PIL image), int label), like torchvision's CIFAR."""

    def __init__(self, images_uint8_nchw: Tensor, labels: Tensor, transform=None):
        if images_uint8_nchw.dtype != torch.uint8 or images_uint8_nchw.ndim != 4:
            raise ValueError("images must be a uint8 N x C x H x W tensor")
        self.data = np.ascontiguousarray(images_uint8_nchw.cpu().permute(0, 2, 3, 1).numpy())  # HWC like CIFAR
        self.targets = [int(v) for v in labels.cpu().tolist()]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
