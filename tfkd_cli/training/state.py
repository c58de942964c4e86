"""A run's progress: what a checkpoint restores besides weights, and the clock that books time into it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Optional

from tfkd_cli.diagnostics import COLUMNS as DIAGNOSTICS
from tfkd_cli.storage.selection import select_epochs, test_view


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
