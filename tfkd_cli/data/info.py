"""`DatasetInfo`: the record the registry (`registry.DATASETS`) holds for each dataset. Its own
module so that the loaders, which read a record, sit below the registry, which names readers
and builders that use the loaders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["DatasetInfo"]


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: everything tfkd knows about a dataset, in one place.

    `train_transform` / `test_transform` describe the official torchvision transforms as steps
    (name, *args) before ToTensor + Normalize(mean, std); `data.reference` builds them and the
    in-memory fast path reads crop/flip/rotate from them (in that order: the official one).
    """

    name: str
    title: str  # human name used in messages
    reader: Callable[..., Any]  # in-memory: (root, split, download) -> (x, y, classes); folder: -> FolderSplit
    num_classes: int | None  # None: read from the data (cifar-layout's meta)
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_train: int  # images in the train split (cost estimates; cifar-layout: the tiny100-32 stand-in)
    num_test: int
    train_transform: tuple[tuple, ...]  # ("crop", padding) | ("flip",) | ("rotate", degrees) | ("resized_crop", size)
    test_transform: tuple[tuple, ...] = ()  # ("resize", size) | ("center_crop", size)
    in_memory: bool = True
    needs_root: bool = True
    # A dataset that builds its own Data (spec, info, common, val_common) -> Data, e.g. one whose
    # classes, size and statistics come from the files (`imagefolder`); None: build_data's path.
    build: Callable[..., Any] | None = None

    def _step(self, name: str) -> tuple | None:
        return next((s for s in self.train_transform if s[0] == name), None)

    @property
    def crop_padding(self) -> int | None:
        """RandomCrop(image_size, padding=...) of the train transform, or None (no crop)."""
        step = self._step("crop")
        return step[1] if step else None

    @property
    def rotation(self) -> float:
        """RandomRotation degrees of the train transform (0: none)."""
        step = self._step("rotate")
        return float(step[1]) if step else 0.0

    @property
    def flip(self) -> bool:
        return self._step("flip") is not None
