"""Data layer: dataset registry, readers, the in-memory fast path and the folder DataLoader path.

    data = build_data(DataSpec("cifar100", root, batch_size=128, device="cuda"))  # or build_data("cifar100", root, ...)
    for x, y in data.train_batches(epoch, seed):       # deterministic in (seed, epoch, rank, world_size)
        ...
    for x, y in data.test_batches():
        ...

See `loaders` for the determinism contract and `augment` for the fast augmentation, which
matches the official torchvision/PIL transforms pixel for pixel for the same random parameters.
"""

from tfkd_cli.data.augment import AugParams, BatchAugmenter, apply_params, sample_params
from tfkd_cli.data.build import DataSpec, build_data
from tfkd_cli.data.folder import FolderData
from tfkd_cli.data.loaders import Data, InMemoryData, shard_order
from tfkd_cli.data.readers import FolderSplit, default_root
from tfkd_cli.data.registry import DATASETS, DatasetInfo, read_split, scan_folder_split

__all__ = [
    "DATASETS", "DatasetInfo", "Data", "DataSpec", "InMemoryData", "FolderData", "FolderSplit", "build_data", "default_root",
    "read_split", "scan_folder_split", "shard_order", "AugParams", "BatchAugmenter", "sample_params", "apply_params",
]
