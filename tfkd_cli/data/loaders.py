"""Batch iterators: the `Data` interface, its helpers and the in-memory fast path.

The folder DataLoader path is `folder.FolderData`; `build.build_data` reads a dataset into one.

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
from typing import Iterator

import torch
from torch import Tensor

from tfkd_cli.data.augment import AugParams, BatchAugmenter
from tfkd_cli.data.readers import _one_line
from tfkd_cli.data.info import DatasetInfo
from tfkd_cli.errors import TfkdError

__all__ = ["Data", "InMemoryData", "shard_order", "mix_seed", "class_balanced_subset"]

Batch = tuple[Tensor, Tensor]
MASK63 = (1 << 63) - 1


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
    return struct.unpack("<Q", h)[0] & MASK63


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


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
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
        check_int("epoch", epoch, 0)
        check_int("seed", seed, -(1 << 63))
        check_int("start_step", start_step, 0, self.steps_per_epoch)

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
        n = self.num_train if limit is None else min(check_int("limit", limit, 0), self.num_train)
        return self._plain(self._train_x, self._train_y, n)
