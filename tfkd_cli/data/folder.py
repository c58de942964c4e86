"""The folder DataLoader path: ImageFolder-style datasets decoded by PIL transforms in
DataLoader workers (the determinism contract is in `loaders`)."""

from __future__ import annotations

import math
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tfkd_cli.data.loaders import MASK63, Batch, Data, check_int, mix_seed, shard_order
from tfkd_cli.data.readers import FolderSplit, _one_line
from tfkd_cli.data.info import DatasetInfo
from tfkd_cli.errors import TfkdError


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
            yield i, (base + pos) & MASK63

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
        # torchvision loads here, when a folder dataset is built, not with the package
        from tfkd_cli.data.transforms import test_transform, train_transform

        self._init_common(info, classes, 0 if train is None else len(train.samples), len(test.samples),
                          batch_size=batch_size, eval_batch_size=eval_batch_size, rank=rank, world_size=world_size,
                          device=device, channels_last=channels_last, augment=augment, missing_train=missing_train)
        # no more workers than the cores this process may use (more only adds DataLoader's
        # warning and contention); transforms are seeded per sample, so this changes no number
        self.workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self._pin = device.type == "cuda"
        test_tf = test_transform(info)
        train_tf = train_transform(info) if augment else test_tf
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
        n = self.num_train if limit is None else min(check_int("limit", limit, 0), self.num_train)
        ds = torch.utils.data.Subset(self._train_eval_ds, range(n))
        return self._to_device(DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False,
                                          **self._loader_kwargs(persistent=False)))
