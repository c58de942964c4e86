"""Fault injection for the crash-safety tests, off unless its environment variables are set.

TFKD_FAULT=<name>:<n> SIGKILLs the process the n-th time the named point is reached. Points:
step (before each training step), checkpoint_write (inside each checkpoint file's atomic write:
temp file written, not yet synced or renamed), eval (before each end-of-epoch evaluation),
metrics (after an epoch's checkpoints, before metrics.csv).

TFKD_FAULT_NAN=<rank>:<step> makes that rank see a non-finite loss at that (0-based) step of
each epoch, the way one DDP rank can meet a bad batch that the others do not.
"""

from __future__ import annotations

import os
import signal

_FAULT = os.environ.get("TFKD_FAULT", "")
_FAULT_NAN = os.environ.get("TFKD_FAULT_NAN", "")
_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die by SIGKILL at the configured point (see TFKD_FAULT)."""
    if not _FAULT:
        return
    point, _, n = _FAULT.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_fault(rank: int, step: int) -> bool:
    """Should this rank's loss at this step count as non-finite (see TFKD_FAULT_NAN)?"""
    return bool(_FAULT_NAN) and _FAULT_NAN == f"{rank}:{step}"
