"""The validation split: N images per class held out of the training set (`data.val_per_class`).

The held-out images are a pure function of (training labels, N, `data.subset_seed`): the run
seed never enters, so every run of a table or a sweep holds out the same images and trains on
the rest. The split comes first, from the whole training split; a `data.per_class` subset is
then drawn from what is left, so the held-out images never depend on the training subset size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tfkd_cli.data.loaders import class_balanced_subset, mix_seed
from tfkd_cli.errors import TfkdError


def val_split(labels: Tensor, val_per_class: int, subset_seed: int, num_classes: int,
              per_class: int | None = None, what: str = "the dataset") -> tuple[Tensor, Tensor]:
    """Sorted (train, val) indices into the training split: `val_per_class` images of every class
    in val, the rest (or a class-balanced `per_class` subset of the rest) in train. With
    `val_per_class=0`, val is empty and train is exactly the `per_class` subset of old."""
    train, val = torch.arange(labels.shape[0]), torch.zeros(0, dtype=torch.int64)
    if val_per_class:
        counts = torch.bincount(labels, minlength=num_classes)
        smallest = int(counts.min())
        if val_per_class >= smallest:
            raise TfkdError(f"data.val_per_class={val_per_class} is not smaller than a class's training images "
                            f"in {what}: class {int(counts.argmin())} has only {smallest}; expected "
                            f"val_per_class <= {smallest - 1}")
        if per_class is not None and per_class > smallest - val_per_class:
            raise TfkdError(f"data.per_class={per_class} plus data.val_per_class={val_per_class} is more than "
                            f"{what} has: the smallest class has {smallest} training images; expected "
                            f"per_class <= {smallest - val_per_class}")
        # Its own seed stream: the val images are not the head of the per_class subset's permutation.
        val = class_balanced_subset(labels, val_per_class, mix_seed("val", int(subset_seed)), num_classes, what)
        rest = torch.ones(labels.shape[0], dtype=torch.bool)
        rest[val] = False
        train = rest.nonzero().flatten()
    if per_class is not None:
        train = train[class_balanced_subset(labels[train], per_class, subset_seed, num_classes, what)]
    return train, val
