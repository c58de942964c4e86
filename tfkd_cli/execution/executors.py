"""Executors: how a plan's runs are placed. `local` runs them on this machine (runner.run_plan:
--jobs, --devices), `slurm` submits one Slurm job per run (slurm.py, submitit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tfkd_cli.execution import slurm
from tfkd_cli.tables.plan import PlannedRun
from tfkd_cli.execution.runner import run_plan


@dataclass
class LocalOptions:
    jobs: int = 1
    devices: Optional[list[str]] = None


def run_local(plan: list[PlannedRun], o: LocalOptions, runs_dir: Path, *, retry_failed: bool = False,
              log: Callable[[str], None] = print,
              on_finished: Optional[Callable[[PlannedRun], None]] = None) -> dict[Path, str]:
    return run_plan(plan, jobs=o.jobs, devices=o.devices, retry_failed=retry_failed, log=log, on_finished=on_finished)


# name -> executor `(plan, options, runs_dir, *, retry_failed, log, on_finished) -> run dir -> state`
# (slurm.run_plan imports submitit only when it submits)
EXECUTORS: dict[str, Callable[..., dict[Path, str]]] = {"local": run_local, "slurm": slurm.run_plan}
