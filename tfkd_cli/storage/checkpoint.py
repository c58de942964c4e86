"""Checkpoints: safe reads, tfkd and official formats.

Every read goes through `torch.load(..., weights_only=True)`: a file that needs arbitrary
unpickling (and could run code) is refused, never executed. Every write is an atomic write
(`tfkd_cli.storage.rundir.atomic_write`), so a crash leaves either the old file or the new one.

tfkd format (a dict, written by `tfkd_cli.training.loop`): format="tfkd", version, arch {model,
num_classes, width}, model (state_dict), optimizer (state_dict), epoch (completed epochs),
recipe_hash, rng {python, numpy, torch[, cuda]}, teacher_sha256 (or None), threads (torch CPU
threads of the writer), and state (`tfkd_cli.training.state.State.to_dict()`): epoch, step (completed
steps of the next epoch, for mid-epoch checkpoints), best {top1, epoch}, history (the
metrics.csv rows), acc (running epoch sums; under DDP also every rank's, "ranks"),
train_time, run_time, run_time_known, images, resumes. A resume needs model, optimizer,
state, rng and recipe_hash; evaluating or distilling from the file needs model and arch.

Official format (yuanli2333/Teacher-free-Knowledge-Distillation `utils.save_checkpoint`):
a dict with `state_dict`, optionally `optim_dict` and `epoch`; keys may carry the
`module.` prefix of nn.DataParallel.
"""

from __future__ import annotations

import hashlib
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from tfkd_cli.errors import TfkdError
from tfkd_cli.storage.rundir import atomic_write

FORMAT = "tfkd"
VERSION = 1


def save(path: Path, obj: dict, before_replace: Optional[Callable[[], None]] = None) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), before_replace)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_sentence(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line.split(". ")[0].rstrip(".")[:200]


def _imports_code(path: Path) -> bool:
    """Whether a (non-zip) pickle file names a Python global, i.e. would import or call code.

    The weights-only unpickler may stop at an opcode it does not know before it reaches the
    global; this scan (it executes nothing) tells such a file from plain garbage.
    """
    try:
        with open(path, "rb") as f:
            for _ in range(5):  # legacy torch files are a few pickles in a row
                for op, _arg, _pos in pickletools.genops(f):
                    if op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE"):
                        return True
    except Exception:  # noqa: BLE001 - not a pickle (any more): garbage
        return False
    return False


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, pickles that
    start with the PROTO opcode (0x80). Anything else is not a checkpoint."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def load(path: Path) -> dict:
    """Read a checkpoint safely (weights_only); one-line errors for every failure."""
    path = Path(path)
    if not path.is_file():
        raise TfkdError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise TfkdError(f"corrupt or truncated checkpoint {path}: the file is empty")
    if not _looks_like_torch_file(path):  # else torch.load's reading of garbage depends on its first bytes
        raise TfkdError(f"corrupt checkpoint {path}: not a readable PyTorch file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower() or _imports_code(path):
            raise TfkdError(f"refused to load {path}: it needs arbitrary unpickling (code could run); "
                            "only plain tensors and containers are accepted") from None
        raise TfkdError(f"corrupt checkpoint {path}: not a readable PyTorch file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise TfkdError(f"corrupt or truncated checkpoint {path}: {_first_sentence(e)}") from None
    except Exception:  # anything else the unpickler raises is still a bad file
        raise TfkdError(f"corrupt checkpoint {path}: not a readable PyTorch file") from None
    if not isinstance(obj, dict):
        raise TfkdError(f"{path}: not a checkpoint (expected a dict, got {type(obj).__name__})")
    return obj


def is_tfkd(ckpt: dict) -> bool:
    return ckpt.get("format") == FORMAT


def state_dict_of(ckpt: dict, path: Path) -> dict:
    """The model weights of a tfkd, official (`state_dict`) or bare state_dict checkpoint."""
    if is_tfkd(ckpt):
        if ckpt.get("version", 0) > VERSION:
            raise TfkdError(f"{path}: checkpoint format version {ckpt['version']} is newer than "
                            f"this tfkd reads ({VERSION}); upgrade tfkd")
        sd = ckpt["model"]
    elif "state_dict" in ckpt:
        sd = ckpt["state_dict"]
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt
    else:
        raise TfkdError(f"{path}: no model weights found (expected a tfkd checkpoint or a dict "
                        "with 'state_dict')")
    return strip_prefix(sd)


def strip_prefix(sd: dict, prefixes: tuple = ("module.", "_orig_mod.")) -> dict:
    """Remove DataParallel/DDP `module.` and torch.compile `_orig_mod.` prefixes."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        out[k] = v
    return out


def load_weights(model: nn.Module, sd: dict, path: Path, what: str) -> None:
    """load_state_dict(strict=True) with a one-line error that says why it does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[0]}")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatch(es) e.g. {k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}")
        raise TfkdError(f"{path} does not fit {what}: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)


def arch_of(ckpt: dict) -> Optional[dict]:
    return ckpt.get("arch") if is_tfkd(ckpt) else None

