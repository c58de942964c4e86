"""Test-only fault injection (the crash-safety tests): loop `Hooks`, off unless their environment
variables are set.

TFKD_FAULT=<name>:<n> SIGKILLs the process the n-th time the named point is reached. Points:
step (before each training step), checkpoint_write (inside each checkpoint file's atomic write:
temp file written, not yet synced or renamed), eval (before each end-of-epoch evaluation),
metrics (after an epoch's checkpoints, before metrics.csv).

TFKD_FAULT_NAN=<rank>:<step> makes that rank see a non-finite loss at that (0-based) step of
each epoch, the way one DDP rank can meet a bad batch that the others do not.

The variables are read once, at import, and the counts are the process's: a process that
trains several runs (`reproduce`) dies at the n-th point over all of them.
"""

from __future__ import annotations

import os
import signal

import torch

from tfkd_cli.training.loop import NO_HOOKS, Hooks


class Faults(Hooks):
    """The loop hooks that inject the faults `fault` (TFKD_FAULT) and `nan` (TFKD_FAULT_NAN)."""

    def __init__(self, fault: str, nan: str):
        self.fault, self.nan = fault, nan
        self.counts: dict[str, int] = {}

    def point(self, name: str) -> None:
        """Die by SIGKILL at the configured point (see TFKD_FAULT)."""
        if not self.fault:
            return
        point, _, n = self.fault.partition(":")
        if point != name:
            return
        self.counts[name] = self.counts.get(name, 0) + 1
        if self.counts[name] == int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    def before_step(self) -> None:
        self.point("step")

    def step_loss(self, rank: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        if self.nan and self.nan == f"{rank}:{step}":
            return loss * float("nan")
        return loss

    def before_replace(self) -> None:
        self.point("checkpoint_write")

    def before_eval(self) -> None:
        self.point("eval")

    def after_checkpoints(self) -> None:
        self.point("metrics")


_FROM_ENV = Faults(os.environ.get("TFKD_FAULT", ""), os.environ.get("TFKD_FAULT_NAN", ""))


def from_env() -> Hooks:
    """The hooks a training run gets: the environment's faults, or none when it sets none."""
    return _FROM_ENV if _FROM_ENV.fault or _FROM_ENV.nan else NO_HOOKS
