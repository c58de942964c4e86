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

from tfkd_cli.data.readers import get_info

__all__ = ["official_train_transform", "official_test_transform", "ReferenceDataset"]


def official_train_transform(name: str) -> T.Compose:
    """CIFAR-style: RandomCrop(32, padding=4), RandomHorizontalFlip(), RandomRotation(15), ToTensor, Normalize.
    tiny-imagenet: RandomRotation(20), RandomHorizontalFlip(0.5), ToTensor, Normalize (no crop).
    imagenet: RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor, Normalize."""
    info = get_info(name)
    norm = [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if name == "imagenet":
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *norm])
    if name == "tiny-imagenet":
        return T.Compose([T.RandomRotation(info.rotation), T.RandomHorizontalFlip(0.5), *norm])
    steps: list = []
    if info.crop_padding is not None:
        steps.append(T.RandomCrop(info.image_size, padding=info.crop_padding))
    if info.flip:
        steps.append(T.RandomHorizontalFlip())
    if info.rotation:
        steps.append(T.RandomRotation(info.rotation))
    return T.Compose([*steps, *norm])


def official_test_transform(name: str) -> T.Compose:
    """ToTensor + Normalize (imagenet: Resize(256), CenterCrop(224) first)."""
    info = get_info(name)
    norm = [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if name == "imagenet":
        return T.Compose([T.Resize(256), T.CenterCrop(224), *norm])
    return T.Compose(norm)


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
