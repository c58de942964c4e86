"""A run's progress: what a checkpoint restores besides weights, the clock that books time into it,
and an epoch's running sums (`EpochSums`, continued bit for bit from a mid-epoch checkpoint)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.distributed as dist

from tfkd_cli.diagnostics import COLUMNS as DIAGNOSTICS
from tfkd_cli.diagnostics import EpochDiagnostics
from tfkd_cli.storage.selection import select_epochs, test_view
from tfkd_cli.training.runtime import Dist


@dataclass
class State:
    """Everything a checkpoint must restore besides weights and optimizer."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of epoch+1 (mid-epoch checkpoint)
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": 0})
    history: list = field(default_factory=list)  # metrics.csv rows
    acc: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "count": 0})  # running epoch stats
    train_time: float = 0.0  # seconds of training so far (all sessions, up to the checkpoint)
    run_time: float = 0.0  # wall seconds of epochs: training, evaluation, checkpoints (all sessions)
    run_time_known: bool = True  # false when resumed from a checkpoint that did not record it
    images: int = 0  # training images processed so far, all ranks
    resumes: int = 0  # times this run was resumed

    def to_dict(self) -> dict:
        """The checkpoint's "state" entry: the fields in order, as they are (no copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, s: dict) -> "State":
        """A checkpoint's "state" entry. Checkpoints written before run_time (then unknown) and
        resumes existed lack them. Raises KeyError/TypeError on a damaged entry."""
        return cls(epoch=s["epoch"], step=s["step"], best=s["best"], history=s["history"], acc=s["acc"],
                   train_time=s["train_time"], images=s["images"], run_time=s.get("run_time", 0.0),
                   run_time_known=s.get("run_time_known", "run_time" in s), resumes=s.get("resumes", 0))

    def summary(self) -> dict:
        """The summary.json fields the progress decides: epochs, best/last epoch, times, speed."""
        hist = self.history
        best = next((r for r in hist if r["epoch"] == self.best["epoch"]), None)  # the epoch best.pt holds
        picked = select_epochs(hist)  # selected: best on the validation split (None without one)
        return {"epochs_done": self.epoch, "resumes": self.resumes, "best": test_view(best),
                "selected": picked["selected"], "last": picked["last"],
                "diagnostics": _diagnostics(hist[-1] if hist else None),
                "train_time_s": round(self.train_time, 2),
                "run_time_s": round(self.run_time, 2) if self.run_time_known else None,
                "images_per_s": round(self.images / self.train_time, 1) if self.train_time > 0 else None}


def _diagnostics(row: Optional[dict]) -> Optional[dict]:
    """The last epoch's loss-term diagnostics (tfkd_cli.diagnostics), None before any epoch."""
    if row is None:
        return None
    return {k: row.get(k) for k in DIAGNOSTICS}


class Clock:
    """This session's time and images, booked into a State at each checkpoint and epoch end.

    train_time counts the training steps only; run_time all wall time of the epochs (training,
    evaluation, checkpoint writes). What is booked is exactly what a checkpoint then holds.
    """

    def __init__(self, world: int):
        self.world = world
        self.run_mark = self.epoch_start = self.train_mark = time.perf_counter()
        self.seen = self.booked = 0  # this session's images in this epoch / those already booked

    def start_epoch(self) -> None:
        self.epoch_start = self.train_mark = time.perf_counter()
        self.seen = self.booked = 0

    def book(self, state: State, *, train: bool = True, run: bool = True) -> float:
        """Add the time (and images) since the last booking to `state`; returns this session's
        training seconds of the epoch so far."""
        now = time.perf_counter()
        if train:
            state.train_time += now - self.train_mark
            state.images += (self.seen - self.booked) * self.world
            self.train_mark, self.booked = now, self.seen
        if run:
            state.run_time += now - self.run_mark
            self.run_mark = now
        return now - self.epoch_start


class EpochSums:
    """This rank's running loss/accuracy sums of an epoch, kept on the device (no sync per step)."""

    def __init__(self, acc: dict, dd: Dist, device: torch.device):
        # Running epoch sums continue exactly from a mid-epoch checkpoint (float64 -> float is exact).
        ranks = acc.get("ranks")
        if dd.world > 1 and ranks and len(ranks) == dd.world:  # this rank's share of a DDP checkpoint
            mine = ranks[dd.rank]
            acc = {**dict(zip(("loss", "correct", "count"), mine[:3])), **({"diag": mine[3:]} if mine[3:] else {})}
        self.loss = torch.tensor(acc["loss"], device=device, dtype=torch.float64)
        self.correct = torch.tensor(acc["correct"], device=device, dtype=torch.int64)
        self.count = acc["count"]
        # -- diagnostics (issue #17): the epoch's sums of the loss-term gradient norms, saved in
        # mid-epoch checkpoints like the loss sums ([g_label sum, g_teacher sum, batches]).
        self.diag = EpochDiagnostics()
        if acc.get("diag") and acc["diag"][2]:
            self.diag = EpochDiagnostics(torch.tensor(acc["diag"][:2], device=device, dtype=torch.float64),
                                         int(acc["diag"][2]))
        self.bad_step = torch.full((), -1, device=device, dtype=torch.int64)  # first non-finite step
        self.dd, self.device = dd, device

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(bad, torch.tensor(step, device=self.device), self.bad_step)
        n = y.shape[0]
        self.loss += loss.double() * n
        self.correct += (logits.argmax(1) == y).sum()
        self.count += n

    def check_due(self, step: int) -> bool:
        """Checking for NaN syncs with the device: every step on CPU, every 50 on GPU."""
        return self.device.type == "cpu" or step % 50 == 49

    def first_bad(self) -> int:
        """The first non-finite step (0-based) on any rank, or -1. Under DDP every rank calls
        this at the same steps and takes the max over ranks, so all ranks stop together: a rank
        that stopped alone would leave the others waiting forever in the next all-reduce."""
        bad = self.bad_step
        if self.dd.world > 1:
            bad = bad.clone()
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return int(bad)

    def _mine(self) -> dict:
        d = self.diag
        diag = [0.0, 0.0, 0] if d.sums is None else [*d.sums.tolist(), d.batches]
        return {"loss": float(self.loss), "correct": int(self.correct), "count": self.count, "diag": diag}

    def snapshot(self) -> dict:
        """The sums for a mid-epoch checkpoint; with DDP, every rank's own sums."""
        acc = self._mine()
        if self.dd.world > 1:
            mine = torch.tensor([acc["loss"], acc["correct"], acc["count"], *acc["diag"]], dtype=torch.float64,
                                device=self.device)
            parts = [torch.empty_like(mine) for _ in range(self.dd.world)]
            dist.all_gather(parts, mine)
            acc["ranks"] = [[float(p[0]), int(p[1]), int(p[2]), float(p[3]), float(p[4]), int(p[5])] for p in parts]
        return acc

    def totals(self) -> dict:
        """The epoch's sums over all ranks; "diag": the diagnostics' metrics.csv columns."""
        acc = self._mine()
        if self.dd.world > 1:
            t = torch.tensor([acc["loss"], acc["correct"], acc["count"], *acc["diag"]], dtype=torch.float64,
                             device=self.device)
            dist.all_reduce(t)
            acc = {"loss": float(t[0]), "correct": int(t[1]), "count": int(t[2]), "diag": t[3:].tolist()}
        gl, gt, n = acc["diag"]
        acc["diag"] = EpochDiagnostics(torch.tensor([gl, gt], dtype=torch.float64), int(n) if n else 0).row()
        return acc
