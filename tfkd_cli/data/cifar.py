"""CIFAR readers (cifar100, cifar10, cifar-layout): the official python pickles, read by our own
code (no torchvision dataset class, no md5 check), either from the extracted folder or straight
from the members of the `.tar.gz` archive. Unpickling is restricted to the few numpy globals a
CIFAR pickle references, so a crafted file cannot run code. Every problem is a one-line
`TfkdError` naming the file and what was expected.
"""

from __future__ import annotations

import io
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

from tfkd_cli.data.readers import MissingSplit, _err, _one_line, default_root


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
