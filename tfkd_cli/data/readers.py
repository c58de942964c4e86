"""Dataset readers (the registry that names them is `data.registry`).

In-memory datasets (cifar100, cifar10, cifar-layout, digits) are read into a uint8 NCHW tensor
plus int64 labels by `read_split`. Folder datasets (tiny-imagenet, imagenet) are scanned into a
list of (path, label) samples by `scan_folder_split`; their images are decoded by the DataLoader.

CIFAR pickles are read by our own code (no torchvision dataset class, no md5 check), either from
the extracted folder or straight from the members of the `.tar.gz` archive. Unpickling is
restricted to the few numpy globals a CIFAR pickle references, so a crafted file cannot run code.
Every problem is a one-line `TfkdError` naming the file and what was expected.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- pickles

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("codecs", "encode"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR pickle holds only numpy arrays, lists and strings)")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # numpy >= 2 name, no deprecation warning
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str, expected: str) -> Any:
    try:
        return _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, UnicodeDecodeError, MemoryError, OverflowError, struct.error) as e:
        raise _err(f"corrupt or truncated pickle {where}: {type(e).__name__}: {e}; expected {expected}") from None


class _Source:
    """Files of one dataset copy: a folder, or the members of a tar.gz archive."""

    def __init__(self, kind: str, path: Path, prefix: str = ""):
        self.kind = kind  # "dir" | "tar"
        self.path = path
        self.prefix = prefix
        self._members: dict[str, tarfile.TarInfo] | None = None
        self._tar: tarfile.TarFile | None = None

    def describe(self, fname: str) -> str:
        if self.kind == "dir":
            return str(self.path / fname)
        return f"{self.path}:{self.prefix}{fname}"

    def _open_tar(self) -> tarfile.TarFile:
        if self._tar is None:
            try:
                self._tar = tarfile.open(self.path, "r:*")
                self._members = {}
                for m in self._tar.getmembers():
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    self._members[name] = m
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                self.close()
                raise _err(f"corrupt or truncated archive {self.path}: {type(e).__name__}: {e}; "
                           "expected a readable .tar.gz of the official dataset (re-download it)") from None
        return self._tar

    def has(self, fname: str) -> bool:
        if self.kind == "dir":
            return (self.path / fname).is_file()
        self._open_tar()
        assert self._members is not None
        m = self._members.get(self.prefix + fname)
        return m is not None and m.isfile()

    def read(self, fname: str) -> bytes:
        if self.kind == "dir":
            try:
                return (self.path / fname).read_bytes()
            except OSError as e:
                raise _err(f"cannot read {self.path / fname}: {e.strerror or e}") from None
        tar = self._open_tar()
        assert self._members is not None
        try:
            f = tar.extractfile(self._members[self.prefix + fname])
            assert f is not None
            return f.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error, KeyError) as e:
            raise _err(f"corrupt or truncated archive {self.path} (member {self.prefix}{fname}): "
                       f"{type(e).__name__}: {e}; expected a readable .tar.gz (re-download it)") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar = None


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarSpec:
    title: str
    folder: str
    archive: str
    url: str
    md5: str
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: str = "meta"
    label_keys: tuple[str, ...] = ("fine_labels", "labels")
    name_keys: tuple[str, ...] = ("fine_label_names", "label_names")
    num_classes: int | None = None


_CIFAR100 = _CifarSpec(
    "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
    {"train": ("train",), "test": ("test",)}, "meta", ("fine_labels",), ("fine_label_names",), 100)
_CIFAR10 = _CifarSpec(
    "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "batches.meta", ("labels",), ("label_names",), 10)


def _expected_msg(spec: _CifarSpec, root: Path) -> str:
    files = sorted({f for fs in spec.files.values() for f in fs} | {spec.meta})
    listing = "{" + ",".join(files) + "}" if len(files) <= 4 else "{" + ",".join(files[:2]) + ",...," + files[-1] + "}"
    return (f"expected {root}/{spec.folder}/{listing} or {root}/{spec.archive}; download it from {spec.url} "
            "or pass --download")


def _locate_cifar(spec: _CifarSpec, root: Path, split: str, download: bool) -> _Source:
    def find() -> _Source | None:
        if (root / spec.folder / spec.meta).is_file():
            return _Source("dir", root / spec.folder)
        if (root / spec.archive).is_file():
            return _Source("tar", root / spec.archive, spec.folder + "/")
        if (root / spec.meta).is_file() and root.name != spec.folder:  # root is the extracted folder itself
            return _Source("dir", root)
        return None

    src = find()
    if src is None and download:
        _download_cifar(spec, root)
        src = find()
    if src is None:
        raise _err(f"{spec.title} not found under {root}: {_expected_msg(spec, root)}")
    missing = [f for f in (*spec.files[split], spec.meta) if not src.has(f)]
    if missing:
        src.close()
        where = ", ".join(src.describe(f) for f in missing)
        raise MissingSplit(_one_line(f"{spec.title} {split} split not found: missing {where}; {_expected_msg(spec, root)}"))
    return src


def _download_cifar(spec: _CifarSpec, root: Path) -> None:
    try:
        from torchvision.datasets.utils import download_and_extract_archive

        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(spec.url, download_root=str(root), filename=spec.archive, md5=spec.md5)
    except Exception as e:  # network, disk, checksum: all user-fixable
        raise _err(f"download of {spec.title} from {spec.url} failed ({type(e).__name__}: {e}); "
                   f"place {spec.archive} under {root} instead") from None


def _check_dict(obj: Any, where: str, keys: tuple[str, ...], expected: str) -> dict:
    if not isinstance(obj, dict):
        raise _err(f"{where}: expected {expected}, got a pickled {type(obj).__name__}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for k in keys:
        if k not in obj:
            raise _err(f"{where}: key '{k}' missing; expected {expected} (found keys: {', '.join(map(str, obj))})")
    return obj


def _first_key(d: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in d), None)


def _read_meta(src: _Source, fname: str, name_keys: tuple[str, ...], title: str) -> list[str]:
    where = src.describe(fname)
    expected = f"a {title} meta pickle (dict with '{name_keys[0]}')"
    meta = _check_dict(_unpickle(src.read(fname), where, expected), where, (), expected)
    key = _first_key(meta, name_keys)
    if key is None:
        raise _err(f"{where}: none of the keys {', '.join(repr(k) for k in name_keys)} found; expected {expected}")
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not names:
        raise _err(f"{where}: '{key}' is not a non-empty list of class names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_batch(src: _Source, fname: str, label_keys: tuple[str, ...], num_classes: int, title: str,
                size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    where = src.describe(fname)
    expected = f"a {title} data pickle (dict with 'data' N x {3 * size * size} uint8 and '{label_keys[0]}')"
    d = _check_dict(_unpickle(src.read(fname), where, expected), where, ("data",), expected)
    key = _first_key(d, label_keys)
    if key is None:
        raise _err(f"{where}: none of the label keys {', '.join(repr(k) for k in label_keys)} found; expected {expected}")
    data = d["data"]
    if not isinstance(data, np.ndarray):
        raise _err(f"{where}: 'data' is a {type(data).__name__}; expected a numpy uint8 array of shape (N, {3 * size * size})")
    if data.ndim == 4 and data.shape[1:] == (3, size, size):
        data = data.reshape(data.shape[0], -1)
    if data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise _err(f"{where}: 'data' has shape {tuple(data.shape)}; expected (N, {3 * size * size}) "
                   f"(3 x {size} x {size} R,G,B planes per row)")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise _err(f"{where}: 'data' has dtype {data.dtype}; expected uint8 pixel values 0..255")
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(d[key])
    except Exception:  # noqa: BLE001 - ragged or odd objects
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise _err(f"{where}: '{key}' must be a list of {data.shape[0]} integer labels (one per row of 'data'); "
                   f"got {labels.shape[0] if labels.ndim == 1 else 'shape ' + str(labels.shape)} of {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise _err(f"{where}: label {int(labels[i])} at index {i} is out of range; expected 0..{num_classes - 1} "
                   f"({num_classes} classes){f' ({bad.size} bad labels)' if bad.size > 1 else ''}")
    return data, labels


def _to_tensors(parts: list[tuple[np.ndarray, np.ndarray]], size: int = 32) -> tuple[Tensor, Tensor]:
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, size, size).copy())
    return x, torch.from_numpy(labels.copy())


def _read_cifar(spec: _CifarSpec, root: Path | None, split: str, download: bool = False):
    root = Path(root) if root is not None else default_root()
    src = _locate_cifar(spec, root, split, download)
    try:
        classes = _read_meta(src, spec.meta, spec.name_keys, spec.title)
        if spec.num_classes is not None and len(classes) != spec.num_classes:
            raise _err(f"{src.describe(spec.meta)}: {len(classes)} class names; expected {spec.num_classes} for {spec.title}")
        parts = [_read_batch(src, f, spec.label_keys, len(classes), spec.title) for f in spec.files[split]]
    finally:
        src.close()
    x, y = _to_tensors(parts)
    return x, y, classes


def _read_cifar100(root, split, download=False):
    return _read_cifar(_CIFAR100, root, split, download)


def _read_cifar10(root, split, download=False):
    return _read_cifar(_CIFAR10, root, split, download)


def _read_cifar_layout(root, split, download=False):
    root = Path(root) if root is not None else default_root()
    expected = f"expected {root}/{{train,test,meta}} pickles in the CIFAR-100 python layout"
    if not root.is_dir():
        raise _err(f"cifar-layout folder {root} not found; {expected}")
    src = _Source("dir", root)
    if not src.has("meta"):
        raise _err(f"cifar-layout meta not found: missing {root / 'meta'}; {expected}")
    if not src.has(split):
        raise MissingSplit(_one_line(f"cifar-layout {split} split not found: missing {root / split}; {expected}"))
    classes = _read_meta(src, "meta", ("fine_label_names", "label_names"), "CIFAR-layout")
    data = _read_batch(src, split, ("fine_labels", "labels"), len(classes), "CIFAR-layout")
    x, y = _to_tensors([data])
    return x, y, classes


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
