"""Teacher logits computed once per batch, shared by every student that sees the same batches.

The batches of an epoch (order and augmentation) are a pure function of the dataset, seed,
epoch, batch size and rank (see `tfkd_cli.data`). So the frozen teacher's logits on them are
too: the first student to train through an epoch stores them (float32, exactly as computed),
and every later student with the same teacher file and batches reads them instead of running
the teacher. In a reproduction, De-KD's three students of one teacher pay its forward once.

Files: `<dir>/<key>/epoch_<E>.pt`, one [rows, classes] tensor per epoch and rank, written
atomically; `dir` is `.teacher_logits/` beside the student's run directory (for `reproduce`,
the shared runs folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from tfkd_cli.storage import checkpoint as ckpt_io
from tfkd_cli.config.identity import digest
from tfkd_cli.storage.rundir import atomic_write_text

DIRNAME = ".teacher_logits"


class TeacherCache:
    def __init__(self, root: Path, ident: dict):
        key = digest(ident, 20)  # the teacher's weights and this run's batches, not a run identity
        self.dir = Path(root) / DIRNAME / key
        self.ident = ident
        self.hits = 0
        self.misses = 0

    def path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{epoch}.pt"

    def load(self, epoch: int, device: torch.device) -> Optional[torch.Tensor]:
        p = self.path(epoch)
        if not p.is_file():
            return None
        try:
            t = torch.load(p, map_location=device, weights_only=True)
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None
        return t if isinstance(t, torch.Tensor) else None

    def save(self, epoch: int, logits: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "ident.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(self.ident, indent=2) + "\n")
        ckpt_io.save(self.path(epoch), logits.detach().float().cpu().contiguous())
