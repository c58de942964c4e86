"""Build a model from something on disk: a tfkd run, a checkpoint, or the official release.

Accepted everywhere a model or teacher is read (`evaluate`, `--teacher`, recipe teachers):
  * a tfkd run directory (has recipe.yaml): its best.pt, or epoch_N.pt with `epoch=N`;
  * a folder laid out like the official release `base_<name>/`: best.pth.tar, or with
    `epoch=N` the file (N-1).pth.tar (official N.pth.tar holds the state after N+1 epochs);
  * a checkpoint file: tfkd format (architecture inside) or official `.pth.tar` (dict with
    `state_dict`, keys possibly prefixed `module.`), which needs the architecture named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from tfkd_cli.storage import checkpoint as ckpt_io
import yaml

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.models import build_model, canonical_name


@dataclass
class Loaded:
    model: nn.Module
    name: str
    width: float
    num_classes: int
    file: Path
    source: str  # "tfkd-run", "tfkd-checkpoint" or "official"
    epoch: Optional[int]  # epochs of training behind the weights, when known
    dataset: Optional[str] = None  # the dataset it was trained on, when recorded (not in official files)

    def provenance(self) -> dict:
        return {"source": self.source, "file": str(self.file), "sha256": ckpt_io.sha256(self.file),
                "model": self.name, "width": self.width, "epoch": self.epoch}


def resolve_file(path: Path, epoch: Optional[int] = None, which: str = "best") -> Path:
    """The checkpoint file that `path` (+ `epoch`) designates."""
    path = Path(path)
    if path.is_file():
        if epoch is not None:
            raise TfkdError(f"--teacher-epoch applies to a run or release folder, not to the file {path}")
        return path
    if not path.is_dir():
        raise TfkdError(f"not found: {path} (expected a tfkd run directory, a release folder or a checkpoint file)")
    if (path / rundir.RECIPE).is_file():
        name = rundir.epoch_file(epoch) if epoch is not None else (rundir.BEST if which == "best" else rundir.LAST)
        f = path / name
        if not f.is_file():
            kept = sorted(p.name for p in path.glob("epoch_*.pt"))
            hint = f"; kept epochs: {', '.join(kept)}" if kept else "; the run keeps no epoch checkpoints (train.keep_epochs)"
            raise TfkdError(f"{f} not found{hint if epoch is not None else ' (has the run finished an epoch?)'}")
        return f
    name = f"{epoch - 1}.pth.tar" if epoch is not None else ("best.pth.tar" if which == "best" else "last.pth.tar")
    f = path / name
    if not f.is_file():
        raise TfkdError(f"{f} not found (a release folder holds best.pth.tar and, for De-KD, 0.pth.tar / 50.pth.tar)")
    return f


def load_model(path: Path, *, model: Optional[str] = None, width: Optional[float] = None,
               num_classes: Optional[int] = None, epoch: Optional[int] = None,
               which: str = "best") -> Loaded:
    """Load weights into a freshly built model; one-line errors for every mismatch."""
    f = resolve_file(Path(path), epoch, which)
    ck = ckpt_io.load(f)
    sd = ckpt_io.state_dict_of(ck, f)
    arch = ckpt_io.arch_of(ck)
    if arch is not None:
        name, w, k = arch["model"], float(arch["width"]), int(arch["num_classes"])
        if model is not None and canonical_name(model) != canonical_name(name):
            raise TfkdError(f"{f} holds a {name}, not a {canonical_name(model)}")
        if num_classes is not None and k != num_classes:
            raise TfkdError(f"{f} is a {k}-class {name}; the dataset has {num_classes} classes")
        source = "tfkd-run" if (f.parent / rundir.RECIPE).is_file() else "tfkd-checkpoint"
        trained = ck.get("epoch")
        dataset = arch.get("dataset") or _run_dataset(f.parent)
    else:
        if model is None:
            raise TfkdError(f"{f} is an official-format checkpoint: name its architecture "
                            "(--model / --teacher-model / teacher.model)")
        name, w = canonical_name(model), float(width or 1.0)
        k = num_classes if num_classes is not None else _classes_from(sd)
        source, dataset = "official", None
        trained = ck.get("epoch") if isinstance(ck.get("epoch"), int) else None
    net = build_model(name, num_classes=k, width=w)
    ckpt_io.load_weights(net, sd, f, f"model {name} (width {w}, {k} classes)")
    return Loaded(net, name, w, k, f, source, trained, dataset)


def _run_dataset(run: Path) -> Optional[str]:
    """data.dataset of the run a checkpoint sits in (runs written before arch recorded it)."""
    try:
        data = yaml.safe_load((run / rundir.RECIPE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    value = (data or {}).get("data", {}).get("dataset") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _classes_from(sd: dict) -> int:
    """Class count of an official checkpoint: rows of its last 2-D/4-D weight (the classifier)."""
    for key in reversed(list(sd)):
        if key.endswith("weight") and sd[key].dim() in (2, 4):
            return int(sd[key].shape[0])
    raise TfkdError("cannot infer the number of classes from the checkpoint; give --dataset")
