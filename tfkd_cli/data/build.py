"""`build_data`: read a dataset (registry -> reader), hold out the validation split, take the
class-balanced subset, and serve it through the in-memory or the folder path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tfkd_cli.data.folder import FolderData
from tfkd_cli.data.loaders import Data, InMemoryData, check_int
from tfkd_cli.data.readers import FolderSplit, MissingSplit, _one_line, default_root
from tfkd_cli.data.registry import get_info
from tfkd_cli.data.split import val_split
from tfkd_cli.errors import TfkdError


@dataclass(frozen=True)
class DataSpec:
    """What `build_data` reads and how it serves batches (the recipe's data section + the run's device)."""

    name: str
    root: str | Path | None = None  # default: $TFKD_DATA_ROOT, else ./data
    download: bool = False
    per_class: int | None = None  # class-balanced training subset
    subset_seed: int = 0
    augment: bool = True
    workers: int = 4  # folder datasets only
    device: str | torch.device = "cpu"
    batch_size: int = 128  # per process
    eval_batch_size: int = 512
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    val_per_class: int = 0  # training images per class held out as data.val (data.split)
    image_size: int | None = None  # folder datasets: resize on read to N x N (None: the images' one size)
    mean: tuple[float, ...] | None = None  # folder datasets: normalisation (None: the training images')
    std: tuple[float, ...] | None = None
    memory_mb: int = 2048  # folder datasets: held in memory up to this many MiB of pixels, else streamed

    @classmethod
    def of(cls, data_cfg: Any, **serving: Any) -> "DataSpec":
        """From a recipe's `data` section (DataCfg) plus device, batch sizes, rank, world_size, channels_last."""
        return cls(name=data_cfg.dataset, root=data_cfg.root, download=data_cfg.download,
                   per_class=data_cfg.per_class, subset_seed=data_cfg.subset_seed, augment=data_cfg.augment,
                   workers=data_cfg.workers, val_per_class=data_cfg.val_per_class, image_size=data_cfg.image_size,
                   mean=data_cfg.mean, std=data_cfg.std, memory_mb=data_cfg.memory_mb, **serving)


def build_data(spec: DataSpec | str, root: str | Path | None = None, **fields: Any) -> Data:
    """Read a dataset and return its `Data` (see the module docstring for the determinism contract).

    `spec` is a DataSpec, or a dataset name with DataSpec's other fields as keywords
    (`build_data("cifar100", root, batch_size=64)`).
    A copy without a training split (e.g. the 20-image CIFAR-100 sample) builds fine for test-side
    use; `steps_per_epoch`, `train_batches` and `train_eval_batches` then raise a TfkdError.
    `val_per_class=N` holds N training images per class out as `data.val` (see `split`).
    """
    if not isinstance(spec, DataSpec):
        spec = DataSpec(spec, root, **fields)
    info = get_info(spec.name)
    dev = _check(spec)
    root_path = Path(spec.root) if spec.root is not None else (default_root() if info.needs_root else None)
    common = dict(missing_train=None, batch_size=spec.batch_size, eval_batch_size=spec.eval_batch_size,
                  rank=spec.rank, world_size=spec.world_size, device=dev, channels_last=spec.channels_last,
                  augment=spec.augment)
    val_common = {**common, "missing_train": "this is the validation split"}
    if info.build is not None:
        return info.build(spec, info, common, val_common)

    missing_train = train = None
    test = info.reader(root_path, "test", spec.download)
    try:
        train = info.reader(root_path, "train", False)
    except MissingSplit as e:
        missing_train = str(e)
    if spec.val_per_class and missing_train is not None:
        raise TfkdError(f"data.val_per_class={spec.val_per_class} needs a training split to hold images out of: "
                        f"{missing_train}")
    common["missing_train"] = missing_train
    build = _in_memory if info.in_memory else _folder
    return build(spec, info, train, test, root_path, common, val_common)


def _check(spec: DataSpec) -> torch.device:
    """The spec's sizes checked (one-line errors); its device, parsed."""
    check_int("batch_size", spec.batch_size, 1)
    check_int("eval_batch_size", spec.eval_batch_size, 1)
    check_int("workers", spec.workers, 0)
    check_int("world_size", spec.world_size, 1)
    check_int("rank", spec.rank, 0, spec.world_size - 1)
    if spec.per_class is not None:
        check_int("per_class", spec.per_class, 1)
    check_int("val_per_class", spec.val_per_class, 0)
    try:
        return torch.device(spec.device)
    except (RuntimeError, TypeError) as e:
        raise TfkdError(_one_line(f"bad device {spec.device!r}: {e}")) from None


def _in_memory(spec: DataSpec, info: Any, train: Any, test: Any, root: Path | None, common: dict, val_common: dict
               ) -> Data:
    """An in-memory dataset's Data: the training subset and hold-out taken from the read tensors."""
    x_te, y_te, classes = test
    val, where = None, _where(info, root)
    if train is not None:
        x_tr, y_tr, classes_tr = train
        if classes_tr != classes:
            raise TfkdError(f"{info.title} under {root}: train and test splits disagree on the class names")
        if spec.val_per_class or spec.per_class is not None:
            keep, held = val_split(y_tr, spec.val_per_class, spec.subset_seed, len(classes), spec.per_class, where)
            if spec.val_per_class:
                val = InMemoryData(info, classes, None, (x_tr[held], y_tr[held]), **val_common)
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        train = (x_tr, y_tr)
    data = InMemoryData(info, classes, train, (x_te, y_te), **common)
    data.val = val
    return data


def _folder(spec: DataSpec, info: Any, train: Any, test: Any, root: Path | None, common: dict, val_common: dict) -> Data:
    """A folder dataset's Data: the training subset and hold-out taken from the scanned samples."""
    classes, val, where = test.classes, None, _where(info, root)
    if train is not None and (spec.val_per_class or spec.per_class is not None):
        labels = torch.tensor([lab for _, lab in train.samples], dtype=torch.int64)
        keep, held = val_split(labels, spec.val_per_class, spec.subset_seed, len(classes), spec.per_class, where)
        if spec.val_per_class:
            val = FolderData(info, classes, None, FolderSplit([train.samples[i] for i in held.tolist()],
                                                              train.classes, train.root),
                             workers=spec.workers, **val_common)
        train = FolderSplit([train.samples[i] for i in keep.tolist()], train.classes, train.root)
    data = FolderData(info, classes, train, test, workers=spec.workers, **common)
    data.val = val
    return data


def _where(info: Any, root: Path | None) -> str:
    return info.title + (f" under {root}" if root is not None else "")
