"""Dataset readers (the registry that names them is `data.registry`).

In-memory datasets (cifar100, cifar10, cifar-layout, digits) are read into a uint8 NCHW tensor
plus int64 labels by `read_split`. Folder datasets (tiny-imagenet, imagenet) are scanned into a
list of (path, label) samples by `scan_folder_split`; their images are decoded by the DataLoader.

The CIFAR pickles have their own module (`cifar`); here are the readers' shared pieces (split
names, statistics, errors, the data root, FolderSplit), the digits reader and the folder
datasets' scanners. Every problem is a one-line `TfkdError` naming the file and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tfkd_cli.errors import TfkdError

__all__ = ["default_root", "FolderSplit", "MissingSplit", "CIFAR100_MEAN", "CIFAR100_STD"]

SPLITS = ("train", "test")

# The official code normalizes CIFAR-10 with these CIFAR-100 statistics too.
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# digits: per-channel mean and population std of x/255 over the 1,437-image train split of our 32x32 upsampling
# (all three channels are the same grey image); recomputed and checked in tests/test_data.py.
DIGITS_MEAN = (0.30535409481729464, 0.30535409481729464, 0.30535409481729464)
DIGITS_STD = (0.3236636206471599, 0.3236636206471599, 0.3236636206471599)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class MissingSplit(TfkdError):
    """The dataset is there but this split's files are not (e.g. a test-only copy)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _err(msg: str) -> TfkdError:
    return TfkdError(_one_line(msg))


def default_root() -> Path:
    """Data root: env TFKD_DATA_ROOT, else ./data."""
    env = os.environ.get("TFKD_DATA_ROOT")
    return Path(env) if env else Path("data")


# --------------------------------------------------------------------------- digits

DIGITS_TRAIN, DIGITS_TEST = 1437, 360
_digits_cache: dict[str, tuple[Tensor, Tensor]] = {}


def _digits_all() -> dict[str, tuple[Tensor, Tensor]]:
    """scikit-learn's bundled 8x8 digits -> 32x32 RGB uint8, fixed stratified 1,437/360 split."""
    if not _digits_cache:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        img = torch.from_numpy(d.images.astype(np.float64) * (255.0 / 16.0))[:, None]  # (1797, 1, 8, 8), 0..255
        up = torch.nn.functional.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
        x = up.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        y = torch.from_numpy(d.target.astype(np.int64))
        idx = np.arange(len(y))
        tr, te = train_test_split(idx, test_size=DIGITS_TEST, stratify=d.target, random_state=0, shuffle=True)
        tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
        _digits_cache["train"] = (x[tr].contiguous(), y[tr].contiguous())
        _digits_cache["test"] = (x[te].contiguous(), y[te].contiguous())
    return _digits_cache


def _read_digits(root=None, split="train", download=False):
    x, y = _digits_all()[split]
    return x.clone(), y.clone(), [str(i) for i in range(10)]


# --------------------------------------------------------------------------- folder datasets


@dataclass
class FolderSplit:
    samples: list[tuple[str, int]]
    classes: list[str]
    root: Path


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _image_folder(d: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """ImageFolder order: classes sorted, files sorted (recursively) within each class."""
    out = []
    for cls in sorted(class_to_idx):
        cdir = d / cls
        if not cdir.is_dir():
            continue
        for dirpath, dirnames, files in sorted(os.walk(cdir, followlinks=True)):
            dirnames.sort()
            out.extend((os.path.join(dirpath, f), class_to_idx[cls]) for f in sorted(files) if _is_image(f))
    return out


def _class_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir()) if d.is_dir() else []


def _read_tiny_imagenet(root, split, download=False) -> FolderSplit:
    root = Path(root) if root is not None else default_root()
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    expected = (f"expected {root}/tiny-imagenet-200/{{train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
                f"val/val_annotations.txt}}; download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it under {root}")
    if download and not (base / "train").is_dir():
        raise _err(f"tiny-imagenet cannot be downloaded by tfkd; {expected}")
    wnids = _class_dirs(base / "train")
    if not wnids and (base / "wnids.txt").is_file():
        wnids = sorted(w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip())
    if not wnids:
        raise _err(f"Tiny-ImageNet not found under {root}: no class folders in {base / 'train'}; {expected}")
    cti = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        if not (base / "train").is_dir():
            raise MissingSplit(_one_line(f"Tiny-ImageNet train split not found: missing {base / 'train'}; {expected}"))
        samples = _image_folder(base / "train", cti)
    else:
        ann = base / "val" / "val_annotations.txt"
        if ann.is_file():
            samples = []
            for n, line in enumerate(ann.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t") if "\t" in line else line.split()
                if len(parts) < 2:
                    raise _err(f"{ann} line {n}: expected '<file>\\t<wnid>\\t...'; got {line[:60]!r}")
                if parts[1] not in cti:
                    raise _err(f"{ann} line {n}: unknown wnid {parts[1]!r}; expected one of the {len(cti)} train class folders")
                samples.append((str(base / "val" / "images" / parts[0]), cti[parts[1]]))
            samples.sort()
        elif _class_dirs(base / "val"):
            samples = _image_folder(base / "val", cti)
        else:
            raise _err(f"Tiny-ImageNet val split not found: missing {ann}; {expected}")
    if not samples:
        raise _err(f"Tiny-ImageNet {split} split has no images under {base}; {expected}")
    return FolderSplit(samples, wnids, base)


def _read_imagenet(root, split, download=False) -> FolderSplit:
    root = Path(root) if root is not None else default_root()
    base = root / "imagenet" if (root / "imagenet" / "val").is_dir() else root
    expected = f"expected ImageFolder trees {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (val sorted into class folders)"
    if download:
        raise _err(f"ImageNet cannot be downloaded by tfkd; {expected}")
    classes = _class_dirs(base / "train") or _class_dirs(base / "val")
    if not classes:
        raise _err(f"ImageNet not found under {root}; {expected}")
    d = base / ("train" if split == "train" else "val")
    if not d.is_dir():
        raise MissingSplit(_one_line(f"ImageNet {split} split not found: missing {d}; {expected}"))
    samples = _image_folder(d, {c: i for i, c in enumerate(classes)})
    if not samples:
        raise _err(f"ImageNet {split} split has no images under {d}; {expected}")
    return FolderSplit(samples, classes, base)
