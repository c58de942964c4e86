"""`--dataset folder --data-root DIR`: any folder of images, one sub-folder per class.

Layout: DIR/train/<class>/* for training and DIR/val/<class>/* or DIR/test/<class>/* for
evaluation. With both val/ and test/, test/ is the test split and val/ the validation split
(model selection, as `data.val_per_class` gives; the two cannot be combined), so no folder is
ever ignored. Classes are the sorted folder names of train/ (any number); a class of val/ or
test/ must be one of them. Hidden files (a leading '.') are skipped; every other file must be
an image (extensions in `readers.IMG_EXTENSIONS`, and decodable).

Images are resized on read to `data.image_size` (N x N, bilinear; unset: every image must have
one size, which is then used), then augmented CIFAR-style at that size: RandomCrop(N, padding=4),
horizontal flip, rotation by up to 15 degrees. Normalisation: `data.mean` / `data.std` when the
recipe gives them, else the per-channel mean and population std of the training images at that
size, computed once per run and recorded in its summary.json ("normalization").

A set whose pixels (train + eval, 3 x N x N bytes per image) fit in `data.memory_mb` (default
2048 MiB) is held in memory as one uint8 tensor (the fast path of the built-in sets); a larger one
is streamed from disk by DataLoader workers. Every problem is one line naming the path.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfkd_cli.data.folder import FolderData
from tfkd_cli.data.loaders import InMemoryData
from tfkd_cli.data.readers import IMG_EXTENSIONS, FolderSplit, default_root
from tfkd_cli.data.split import val_split
from tfkd_cli.errors import TfkdError

EVAL_SPLITS = ("val", "test")


def _entries(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise TfkdError(f"cannot read directory {d}: {e.strerror or e}") from None


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _class_folders(split_dir: Path) -> list[str]:
    """The class folders of one split; a file or an unreadable entry there is an error."""
    names = []
    for e in _entries(split_dir):
        if not _is_dir(e):
            if e.is_symlink() or not e.is_file():  # a broken or looping link, a socket...
                _entries(Path(e.path))  # raises "cannot read directory"
            raise TfkdError(f"{e.path} is a file; expected class folders {split_dir}/<class>/<image>")
        names.append(e.name)
    if not names:
        raise TfkdError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    return names


def _scan_split(split_dir: Path, class_to_idx: dict[str, int]) -> FolderSplit:
    samples = []
    for name in _class_folders(split_dir):
        if name not in class_to_idx:
            raise TfkdError(f"class folder {split_dir / name} is not in train/; every class of "
                            f"{split_dir.name}/ needs a folder in {split_dir.parent / 'train'}")
        files = [e for e in _entries(split_dir / name)]
        if not files:
            raise TfkdError(f"empty class folder {split_dir / name}; expected at least one image in it")
        for e in files:
            if not e.name.lower().endswith(IMG_EXTENSIONS):
                raise TfkdError(f"{e.path} is not an image; expected {', '.join(IMG_EXTENSIONS)} files "
                                "in class folders (remove it, or hide it with a leading '.')")
            samples.append((e.path, class_to_idx[name]))
    return FolderSplit(samples, list(class_to_idx), split_dir)


def scan(root: Path) -> dict[str, FolderSplit]:
    """{"train": ..., "test": ..., ["val": ...]} of a folder dataset (see the module docstring)."""
    if not root.is_dir():
        raise TfkdError(f"folder dataset not found: {root} is not a directory; expected "
                        f"{root}/train/<class>/<image> and {root}/val/<class>/<image> (or test/)")
    have = {e.name for e in _entries(root) if _is_dir(e)}
    evals = [s for s in EVAL_SPLITS if s in have]
    if "train" not in have or not evals:
        missing = "train/" if "train" not in have else "val/ or test/"
        raise TfkdError(f"folder dataset {root} has no {missing}; expected {root}/train/<class>/<image> "
                        f"and {root}/val/<class>/<image> (or test/)")
    classes = _class_folders(root / "train")
    cti = {c: i for i, c in enumerate(classes)}
    out = {"train": _scan_split(root / "train", cti)}
    for split in evals:
        out[split] = _scan_split(root / split, cti)
    if len(evals) == 1:
        out["test"] = out.pop(evals[0])
    return out


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise TfkdError(" ".join(f"{path} is not a readable image ({type(e).__name__}: {e}); "
                                 "replace or remove the file".split())) from None


def image_size(splits: dict[str, FolderSplit], size: int | None) -> int:
    """`size`, or the one size every image has (read from the file headers)."""
    if size is not None:
        return size
    from PIL import Image

    first = None
    for split in splits.values():
        for path, _ in split.samples:
            try:
                with Image.open(path) as img:
                    wh = img.size
            except Exception:  # noqa: BLE001 - any decoder failure is the file's problem, named by _open
                _open(path)
                raise
            first = first or (path, wh)
            if wh != first[1] or wh[0] != wh[1]:
                raise TfkdError(f"{path} is {wh[0]}x{wh[1]} but {first[0]} is {first[1][0]}x{first[1][1]}; "
                                "a folder of mixed or non-square sizes needs --set data.image_size=N (resize on read)")
    return first[1][0]


def read_pixels(split: FolderSplit, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x size x size (resized bilinear, as torchvision's Resize((size, size))) + labels."""
    from PIL import Image

    x = torch.empty((len(split.samples), 3, size, size), dtype=torch.uint8)
    for i, (path, _) in enumerate(split.samples):
        img = _open(path)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        x[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return x, torch.tensor([lab for _, lab in split.samples], dtype=torch.int64)


def pixel_stats(batches: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of x/255 over uint8 N x 3 x H x W batches (float64 sums)."""
    n, s, s2 = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for x in batches:
        v = x.to(torch.float64) / 255.0
        n += v.shape[0] * v.shape[2] * v.shape[3]
        s += v.sum(dim=(0, 2, 3))
        s2 += (v * v).sum(dim=(0, 2, 3))
    mean = s / n
    return tuple(mean.tolist()), tuple((s2 / n - mean * mean).clamp_min(0).sqrt().tolist())


def folder_info(info: Any, classes: list[str], size: int, mean: Any, std: Any, in_memory: bool) -> Any:
    """The registry record of this folder: its classes, size, statistics and CIFAR-style steps."""
    resize = (("resize", (size, size)),)
    return dataclasses.replace(info, num_classes=len(classes), image_size=size, mean=tuple(mean), std=tuple(std),
                               in_memory=in_memory, train_transform=(*resize, *info.train_transform),
                               test_transform=resize)


def read_folder(root: str | Path | None, split: str, download: bool = False) -> FolderSplit:
    """The registry's reader: one split's (path, label) samples (val/ when the folder has both)."""
    if download:
        raise TfkdError("a folder dataset cannot be downloaded; point --data-root at DIR with train/ and val/ (or test/)")
    return scan(Path(root) if root is not None else default_root())[split]


def _subset(split: FolderSplit, idx: torch.Tensor) -> FolderSplit:
    return FolderSplit([split.samples[i] for i in idx.tolist()], split.classes, split.root)


def _stats(spec: Any, train: FolderSplit, pixels: torch.Tensor | None, size: int) -> tuple[tuple, tuple]:
    """data.mean / data.std when given, else those of the training images (streamed: read in chunks)."""
    if spec.mean is not None and spec.std is not None:
        return tuple(spec.mean), tuple(spec.std)
    if pixels is not None:
        return pixel_stats([pixels])
    chunks = (read_pixels(_subset(train, torch.arange(i, min(i + 256, len(train.samples)))), size)[0]
              for i in range(0, len(train.samples), 256))
    return pixel_stats(chunks)


def build_folder(spec: Any, info: Any, common: dict, val_common: dict) -> Any:
    """`build_data` for a folder dataset: scan, size, hold-out and subset, then memory or stream."""
    root = Path(spec.root) if spec.root is not None else default_root()
    splits = scan(root)
    if "val" in splits and spec.val_per_class:
        raise TfkdError(f"{root} has val/ and test/: val/ is the validation split, so data.val_per_class="
                        f"{spec.val_per_class} would hold out a second one; set it to 0")
    size = image_size(splits, spec.image_size)
    train, classes = splits["train"], splits["train"].classes
    if spec.val_per_class or spec.per_class is not None:
        labels = torch.tensor([lab for _, lab in train.samples], dtype=torch.int64)
        keep, held = val_split(labels, spec.val_per_class, spec.subset_seed, len(classes), spec.per_class, str(root))
        if spec.val_per_class:
            splits["val"] = _subset(train, held)
        train = splits["train"] = _subset(train, keep)
    images = sum(len(s.samples) for s in splits.values())
    in_memory = images * 3 * size * size <= spec.memory_mb * 2 ** 20
    pixels = {k: read_pixels(s, size) for k, s in splits.items()} if in_memory else {}
    mean, std = _stats(spec, train, pixels["train"][0] if in_memory else None, size)
    info = folder_info(info, classes, size, mean, std, in_memory)

    def make(tr: str | None, te: str, kw: dict) -> Any:
        if in_memory:
            return InMemoryData(info, classes, tr and pixels[tr], pixels[te], **kw)
        return FolderData(info, classes, tr and splits[tr], splits[te], workers=spec.workers, **kw)

    data = make("train", "test", common)
    data.val = make(None, "val", val_common) if "val" in splits else None
    return data
