"""Batch iterators: the in-memory fast path and the folder DataLoader path.

Determinism contract (both paths): the batches of `train_batches(epoch, seed)` are a pure
function of (seed, epoch, rank, world_size) and the build arguments.
- Order: one permutation of the train set from a `torch.Generator` seeded by (seed, epoch);
  like DistributedSampler it is padded (by repeating its head) to a multiple of world_size and
  rank r takes positions r, r + world_size, ... Batches of `batch_size`, the last one short
  (drop_last=False, like the official DataLoader).
- Augmentation: in memory, batch k is augmented with a generator seeded by
  (seed, epoch, rank, k); in folder datasets, the sample at shard position p is transformed under
  torch's RNG seeded by (seed, epoch, rank) + p, inside whichever worker decodes it.
- `start_step=k` yields exactly batches k, k+1, ...; skipped batches are never loaded or augmented.
The global RNGs are never used or disturbed.
"""

from __future__ import annotations

import hashlib
import math
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tfkd_cli.data.augment import AugParams, BatchAugmenter
from tfkd_cli.data.readers import FolderSplit, MissingSplit, _one_line, default_root
from tfkd_cli.data.registry import DatasetInfo, get_info
from tfkd_cli.errors import TfkdError

__all__ = ["Data", "DataSpec", "InMemoryData", "FolderData", "build_data", "shard_order", "mix_seed", "class_balanced_subset"]

Batch = tuple[Tensor, Tensor]
_MASK63 = (1 << 63) - 1


# Threads for the fast path's per-batch tensor ops on CPU. The ops are small (~0.1-1 M elements),
# so OpenMP parallel regions buy little, and on a loaded or virtualised machine a preempted
# OpenMP thread stalls every barrier: measured 2 threads = 1k-210k img/s (erratic), 1 thread =
# 120-150k img/s (steady) on a 2-vCPU VM. The previous setting is restored before each yield.
CPU_AUG_THREADS = 1
# Batches augmented per call of the fast path (results are identical for any value). On CUDA
# the fast path is bound by host-side per-call overhead (kernel launches, the small per-image
# tables built on the CPU), so preparing 8 batches per call amortizes it; on CPU it is neutral.
CHUNK_STEPS = 8


@contextmanager
def _aug_threads(device: torch.device):
    prev = torch.get_num_threads()
    if device.type != "cpu" or prev == CPU_AUG_THREADS:
        yield
        return
    torch.set_num_threads(CPU_AUG_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs, platforms, processes)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return struct.unpack("<Q", h)[0] & _MASK63


def shard_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """This rank's indices for one epoch (int64, CPU): DistributedSampler semantics, our seeding."""
    g = torch.Generator().manual_seed(mix_seed("perm", int(seed), int(epoch)))
    perm = torch.randperm(n, generator=g)
    if world_size == 1:
        return perm
    total = math.ceil(n / world_size) * world_size
    if total > n:
        reps = math.ceil((total - n) / n)
        perm = torch.cat([perm, perm.repeat(reps)[: total - n]])
    return perm[rank:total:world_size]


def class_balanced_subset(labels: Tensor, per_class: int, seed: int, num_classes: int, what: str) -> Tensor:
    """Sorted indices of the first `per_class` images of every class after a permutation seeded by `seed`."""
    g = torch.Generator().manual_seed(mix_seed("subset", int(seed)))
    perm = torch.randperm(labels.shape[0], generator=g)
    lab = labels[perm]
    counts = torch.bincount(labels, minlength=num_classes)
    short = (counts < per_class).nonzero().flatten()
    if short.numel():
        c = int(short[0])
        raise TfkdError(_one_line(f"per_class={per_class} is more than {what} has: class {c} has only {int(counts[c])} "
                                  f"training images (smallest class: {int(counts.min())}); expected per_class <= {int(counts.min())}"))
    # rank of each permuted position within its class: stable sort by label keeps permutation order
    order = torch.sort(lab, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    pos_in_class = torch.empty_like(order)
    pos_in_class[order] = torch.arange(order.numel()) - starts[lab[order]]
    keep = perm[pos_in_class < per_class]
    return torch.sort(keep).values


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise TfkdError(f"{name} must be an integer {rng}; got {value!r}")
    return value


class Data:
    """A dataset ready for training: attributes + deterministic batch iterators (see module doc)."""

    name: str
    num_classes: int
    image_size: int
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_train: int  # 0 when the copy has no training split (then train iterators raise)
    num_test: int
    batch_size: int
    eval_batch_size: int
    rank: int
    world_size: int
    device: torch.device
    channels_last: bool
    augment: bool
    has_train: bool
    _missing_train: str | None
    val: "Data | None" = None  # the held-out validation split (data.val_per_class), test-side only

    def _init_common(self, info: DatasetInfo, classes: list[str], num_train: int, num_test: int, *,
                     batch_size: int, eval_batch_size: int, rank: int, world_size: int, device: torch.device,
                     channels_last: bool, augment: bool, missing_train: str | None) -> None:
        self.info = info
        self.name = info.name
        self.classes = list(classes)
        self.num_classes = len(classes)
        self.image_size = info.image_size
        self.mean, self.std = tuple(info.mean), tuple(info.std)
        self.num_train, self.num_test = num_train, num_test
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.rank, self.world_size = rank, world_size
        self.device, self.channels_last, self.augment = device, channels_last, augment
        self._missing_train = missing_train
        self.has_train = missing_train is None

    def _require_train(self) -> None:
        if self._missing_train is not None:
            raise TfkdError(f"no training data: {self._missing_train}")

    @property
    def samples_per_rank(self) -> int:
        self._require_train()
        return math.ceil(self.num_train / self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch for this rank (the last one may be short)."""
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _check_step(self, epoch: int, seed: int, start_step: int) -> None:
        _check_int("epoch", epoch, 0)
        _check_int("seed", seed, -(1 << 63))
        _check_int("start_step", start_step, 0, self.steps_per_epoch)

    def train_order(self, epoch: int, seed: int) -> Tensor:
        """This rank's train-sample indices for the epoch (CPU int64), in batch order."""
        self._require_train()
        return shard_order(self.num_train, seed, epoch, self.rank, self.world_size)

    def train_batches(self, epoch: int, seed: int, start_step: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def test_batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def train_eval_batches(self, limit: int | None = None) -> Iterator[Batch]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}: {self.num_classes} classes, train {self.num_train}, "
                f"test {self.num_test}, batch {self.batch_size}, rank {self.rank}/{self.world_size}, {self.device})")


# --------------------------------------------------------------------------- in memory


class InMemoryData(Data):
    """Whole splits as uint8 NCHW tensors on `device`; augmentation as batched tensor ops there."""

    def __init__(self, info: DatasetInfo, classes: list[str], train: tuple[Tensor, Tensor] | None,
                 test: tuple[Tensor, Tensor], *, missing_train: str | None, batch_size: int, eval_batch_size: int,
                 rank: int, world_size: int, device: torch.device, channels_last: bool, augment: bool):
        self._train_x = self._train_y = None
        if train is not None:
            self._train_x = train[0].to(device).contiguous()
            self._train_y = train[1].to(device)
        self._test_x = test[0].to(device).contiguous()
        self._test_y = test[1].to(device)
        self._init_common(info, classes, 0 if train is None else int(train[0].shape[0]), int(test[0].shape[0]),
                          batch_size=batch_size, eval_batch_size=eval_batch_size, rank=rank, world_size=world_size,
                          device=device, channels_last=channels_last, augment=augment, missing_train=missing_train)
        # batches prepared per call: amortizes per-call overhead (kernel launches, small CPU ops)
        self.chunk_steps = CHUNK_STEPS
        self.augmenter = BatchAugmenter(info.mean, info.std, padding=info.crop_padding, degrees=info.rotation,
                                        flip=info.flip, device=device, channels_last=channels_last)

    def train_batches(self, epoch: int, seed: int, start_step: int = 0) -> Iterator[Batch]:
        self._require_train()
        self._check_step(epoch, seed, start_step)
        return self._train_iter(epoch, seed, start_step)

    def _train_iter(self, epoch: int, seed: int, start_step: int) -> Iterator[Batch]:
        order = self.train_order(epoch, seed).to(self.device)
        bs, steps, chunk = self.batch_size, self.steps_per_epoch, self.chunk_steps
        for first in range(start_step, steps, chunk):
            last = min(first + chunk, steps)  # batches first..last-1 are prepared in one go
            with _aug_threads(self.device):
                idx = order[first * bs:last * bs]
                xb = self._train_x.index_select(0, idx)
                yb = self._train_y.index_select(0, idx)
                if self.augment:
                    # each batch's parameters from its own generator: chunking changes nothing
                    params = AugParams.cat([
                        self.augmenter.sample(min(bs, idx.shape[0] - (s - first) * bs),
                                              torch.Generator().manual_seed(mix_seed("aug", int(seed), int(epoch), self.rank, s)))
                        for s in range(first, last)])
                    xb = self.augmenter.apply(xb, params)
                else:
                    xb = self.augmenter.normalize(xb)
            for k in range(last - first):
                yield xb[k * bs:(k + 1) * bs], yb[k * bs:(k + 1) * bs]

    def _plain(self, x: Tensor, y: Tensor, n: int) -> Iterator[Batch]:
        for i in range(0, n, self.eval_batch_size):
            j = min(i + self.eval_batch_size, n)
            with _aug_threads(self.device):
                xb = self.augmenter.normalize(x[i:j])
            yield xb, y[i:j]

    def test_batches(self) -> Iterator[Batch]:
        """The whole test split in order, normalized (not sharded across ranks)."""
        return self._plain(self._test_x, self._test_y, self.num_test)

    def train_eval_batches(self, limit: int | None = None) -> Iterator[Batch]:
        """Un-augmented train images in stored order (the first `limit`), not sharded."""
        self._require_train()
        n = self.num_train if limit is None else min(_check_int("limit", limit, 0), self.num_train)
        return self._plain(self._train_x, self._train_y, n)


# --------------------------------------------------------------------------- folder datasets


def _load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise TfkdError(_one_line(f"unreadable image {path}: {type(e).__name__}: {e}; "
                                  "expected a readable JPEG/PNG image (replace or remove the file)")) from None


class _FolderDataset(Dataset):
    """(path, label) samples -> (transformed tensor, label). An index may be (i, seed): then the
    transform runs under torch's RNG seeded with `seed` (restored afterwards)."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[i]
        img = _load_image(path)
        if seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label


class _EpochShardSampler(Sampler):
    """Yields (index, per-sample seed) for this rank's shard of the (seed, epoch) permutation,
    starting at position `start`. Mutable so one persistent DataLoader serves every epoch."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size
        self.seed, self.epoch, self.start = 0, 0, 0

    def set(self, seed: int, epoch: int, start: int) -> None:
        self.seed, self.epoch, self.start = seed, epoch, start

    def __iter__(self):
        order = shard_order(self.n, self.seed, self.epoch, self.rank, self.world_size)[self.start:].tolist()
        base = mix_seed("aug", int(self.seed), int(self.epoch), self.rank)
        for pos, i in enumerate(order, self.start):
            yield i, (base + pos) & _MASK63

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world_size) - self.start)


def _worker_error(e: TfkdError) -> TfkdError:
    """A TfkdError re-raised from a DataLoader worker carries a traceback; keep its one message line."""
    text = str(e)
    marker = "TfkdError: "
    if "\n" in text and marker in text:
        text = text[text.rindex(marker) + len(marker):]
    return TfkdError(_one_line(text.strip().splitlines()[0] if text.strip() else text))


class FolderData(Data):
    """ImageFolder-style datasets decoded by a tuned DataLoader (PIL transforms in workers)."""

    def __init__(self, info: DatasetInfo, classes: list[str], train: FolderSplit | None, test: FolderSplit, *,
                 missing_train: str | None, batch_size: int, eval_batch_size: int, rank: int, world_size: int,
                 device: torch.device, channels_last: bool, augment: bool, workers: int):
        from tfkd_cli.data.reference import official_test_transform, official_train_transform

        self._init_common(info, classes, 0 if train is None else len(train.samples), len(test.samples),
                          batch_size=batch_size, eval_batch_size=eval_batch_size, rank=rank, world_size=world_size,
                          device=device, channels_last=channels_last, augment=augment, missing_train=missing_train)
        self.workers = workers
        self._pin = device.type == "cuda"
        test_tf = official_test_transform(info.name)
        train_tf = official_train_transform(info.name) if augment else test_tf
        self._test_ds = _FolderDataset(test.samples, test_tf)
        self._train_ds = self._train_eval_ds = None
        self._train_loader: DataLoader | None = None
        if train is not None:
            self._train_ds = _FolderDataset(train.samples, train_tf)
            self._train_eval_ds = _FolderDataset(train.samples, test_tf)
            self._sampler = _EpochShardSampler(len(train.samples), rank, world_size)

    def _loader_kwargs(self, persistent: bool) -> dict:
        # an explicit generator: the DataLoader draws its workers' base seed from it instead of the
        # global RNG (our transforms are seeded per sample anyway)
        kw: dict = dict(num_workers=self.workers, pin_memory=self._pin, drop_last=False,
                        generator=torch.Generator().manual_seed(0))
        if self.workers > 0:
            kw.update(persistent_workers=persistent, prefetch_factor=4)
        return kw

    def _to_device(self, loader: DataLoader) -> Iterator[Batch]:
        try:
            for x, y in loader:
                x = x.to(self.device, non_blocking=self._pin)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(self.device, non_blocking=self._pin)
        except TfkdError as e:
            raise _worker_error(e) from None

    def train_batches(self, epoch: int, seed: int, start_step: int = 0) -> Iterator[Batch]:
        self._require_train()
        self._check_step(epoch, seed, start_step)
        if self._train_loader is None:
            self._train_loader = DataLoader(self._train_ds, batch_size=self.batch_size, sampler=self._sampler,
                                            **self._loader_kwargs(persistent=True))
        self._sampler.set(seed, epoch, start_step * self.batch_size)
        return self._to_device(self._train_loader)

    def test_batches(self) -> Iterator[Batch]:
        return self._to_device(DataLoader(self._test_ds, batch_size=self.eval_batch_size, shuffle=False,
                                          **self._loader_kwargs(persistent=False)))

    def train_eval_batches(self, limit: int | None = None) -> Iterator[Batch]:
        self._require_train()
        n = self.num_train if limit is None else min(_check_int("limit", limit, 0), self.num_train)
        ds = torch.utils.data.Subset(self._train_eval_ds, range(n))
        return self._to_device(DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False,
                                          **self._loader_kwargs(persistent=False)))


# --------------------------------------------------------------------------- build


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

    @classmethod
    def of(cls, data_cfg: Any, **serving: Any) -> "DataSpec":
        """From a recipe's `data` section (DataCfg) plus device, batch sizes, rank, world_size, channels_last."""
        return cls(name=data_cfg.dataset, root=data_cfg.root, download=data_cfg.download,
                   per_class=data_cfg.per_class, subset_seed=data_cfg.subset_seed, augment=data_cfg.augment,
                   workers=data_cfg.workers, val_per_class=data_cfg.val_per_class, **serving)


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
    _check_int("batch_size", spec.batch_size, 1)
    _check_int("eval_batch_size", spec.eval_batch_size, 1)
    _check_int("workers", spec.workers, 0)
    _check_int("world_size", spec.world_size, 1)
    _check_int("rank", spec.rank, 0, spec.world_size - 1)
    if spec.per_class is not None:
        _check_int("per_class", spec.per_class, 1)
    _check_int("val_per_class", spec.val_per_class, 0)
    try:
        dev = torch.device(spec.device)
    except (RuntimeError, TypeError) as e:
        raise TfkdError(_one_line(f"bad device {spec.device!r}: {e}")) from None
    root_path = Path(spec.root) if spec.root is not None else (default_root() if info.needs_root else None)
    per_class, subset_seed = spec.per_class, spec.subset_seed

    test = info.reader(root_path, "test", spec.download)
    missing_train = None
    try:
        train = info.reader(root_path, "train", False)
    except MissingSplit as e:
        train, missing_train = None, str(e)

    val_per_class = spec.val_per_class
    if val_per_class and train is None:
        raise TfkdError(f"data.val_per_class={val_per_class} needs a training split to hold images out of: {missing_train}")
    from tfkd_cli.data.split import val_split  # split builds on this module

    where, val = info.title + (f" under {root_path}" if root_path is not None else ""), None
    common = dict(missing_train=missing_train, batch_size=spec.batch_size, eval_batch_size=spec.eval_batch_size,
                  rank=spec.rank, world_size=spec.world_size, device=dev, channels_last=spec.channels_last,
                  augment=spec.augment)
    val_common = {**common, "missing_train": "this is the validation split"}
    if info.in_memory:
        x_te, y_te, classes = test
        if train is not None:
            x_tr, y_tr, classes_tr = train
            if classes_tr != classes:
                raise TfkdError(f"{info.title} under {root_path}: train and test splits disagree on the class names")
            if val_per_class or per_class is not None:
                keep, held = val_split(y_tr, val_per_class, subset_seed, len(classes), per_class, where)
                if val_per_class:
                    val = InMemoryData(info, classes, None, (x_tr[held], y_tr[held]), **val_common)
                x_tr, y_tr = x_tr[keep], y_tr[keep]
            train = (x_tr, y_tr)
        data = InMemoryData(info, classes, train, (x_te, y_te), **common)
        data.val = val
        return data

    classes = test.classes
    if train is not None and (val_per_class or per_class is not None):
        labels = torch.tensor([lab for _, lab in train.samples], dtype=torch.int64)
        keep, held = val_split(labels, val_per_class, subset_seed, len(classes), per_class, where)
        if val_per_class:
            val = FolderData(info, classes, None, FolderSplit([train.samples[i] for i in held.tolist()],
                                                              train.classes, train.root), workers=spec.workers, **val_common)
        train = FolderSplit([train.samples[i] for i in keep.tolist()], train.classes, train.root)
    data = FolderData(info, classes, train, test, workers=spec.workers, **common)
    data.val = val
    return data
