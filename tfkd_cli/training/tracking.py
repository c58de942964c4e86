"""Experiment trackers on request: TensorBoard (`--tensorboard`) and W&B (`--wandb PROJECT`).

Both are runtime settings (recipe `runtime.tensorboard`, `runtime.wandb`): they only read
what the engine computes and never change a run's identity or numbers. The engine talks to
one small interface:

    track = tracking.open(run_dir, recipe, start_step, steps_per_epoch, log)
    track.step(step, lr)   # after each optimisation step; `step` counts steps done in the run
    track.flush()          # before a mid-epoch checkpoint
    track.epoch(row)       # an epoch's metrics.csv row, before its checkpoint
    track.close(ok)        # (or use `track` as a context manager)

A tracker's stream holds what the last checkpoint holds, so a resumed run continues it with
no step twice: TensorBoard is told to drop the earlier sessions' events after the
checkpoint's step (`purge_step`), and W&B is sent a checkpoint's steps only at that checkpoint
(its run id is kept in the run directory, `wandb.json`, and the resumed run continues it).
Epoch metrics are logged at the step that ends the epoch (epoch * steps_per_epoch), the lr
at every step, the resolved recipe as text (TensorBoard) or config (W&B).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import Recipe, RuntimeCfg, dump
from tfkd_cli.storage.rundir import atomic_write_text

TB_DIR = "tensorboard"  # event files inside the run directory
WANDB_ID = "wandb.json"  # the W&B run id of this run directory, for resuming it


class Tracker(Protocol):
    def step(self, step: int, lr: float) -> None: ...
    def epoch(self, row: dict) -> None: ...
    def flush(self) -> None: ...
    def close(self, ok: bool) -> None: ...


def _scalars(row: dict) -> dict[str, float]:
    """The numbers of a metrics.csv row, tagged epoch/<column> (columns may come and go)."""
    out = {}
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"epoch/{k}"] = float(v)
    return out


class TensorBoard:
    """Event files in <run>/tensorboard through torch.utils.tensorboard."""

    def __init__(self, run: Path, recipe: Recipe, start_step: int, steps_per_epoch: int,
                 log: Callable[[str], None]):
        from torch.utils.tensorboard import SummaryWriter

        self.steps_per_epoch = steps_per_epoch
        if start_step == 0:
            self.w = SummaryWriter(str(run / TB_DIR))
            # Four spaces: TensorBoard renders the text as markdown, this keeps the YAML verbatim.
            self.w.add_text("recipe", "\n".join("    " + line for line in dump(recipe).splitlines()), 0)
        else:
            # Events an earlier session wrote after the checkpoint are redone now: TensorBoard
            # drops every earlier event at or after purge_step when it reads the stream.
            self.w = SummaryWriter(str(run / TB_DIR), purge_step=start_step + 1)

    @staticmethod
    def reset(run: Path) -> None:
        """A run starting from step 0: events of the run it replaces are not its own."""
        for p in (run / TB_DIR).glob("events.out.tfevents.*"):
            p.unlink()

    def step(self, step: int, lr: float) -> None:
        self.w.add_scalar("step/lr", lr, step)

    def epoch(self, row: dict) -> None:
        at = int(row["epoch"]) * self.steps_per_epoch
        for tag, v in _scalars(row).items():
            self.w.add_scalar(tag, v, at)
        self.w.flush()

    def flush(self) -> None:
        self.w.flush()

    def close(self, ok: bool) -> None:
        self.w.close()


class WandB:
    """A W&B run (project runtime.wandb) with its files in <run>/wandb; never asks for a key."""

    def __init__(self, run: Path, recipe: Recipe, start_step: int, steps_per_epoch: int,
                 log: Callable[[str], None]):
        import wandb

        self.steps_per_epoch = steps_per_epoch
        self.pending: list[tuple[int, dict]] = []  # steps since the last checkpoint
        old = _read_id(run) if start_step > 0 else None  # None: W&B makes a new id
        mode = None
        if os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun") \
                and not wandb.login(prompt=False, verify=False):
            mode = "offline"
            log(f"note: no W&B API key here (wandb login or WANDB_API_KEY); logging offline to "
                f"{run / 'wandb'}; upload it later with `wandb sync`")
        self.run = wandb.init(project=recipe.runtime.wandb, id=old, resume="allow", dir=str(run),
                              name=run.name, config=recipe.to_dict(), allow_val_change=True, mode=mode,
                              settings=wandb.Settings(console="off", silent=True))
        atomic_write_text(run / WANDB_ID, json.dumps({"id": self.run.id, "project": recipe.runtime.wandb}) + "\n")

    @staticmethod
    def reset(run: Path) -> None:
        """A run starting from step 0 is a new W&B run (its local files stay W&B's)."""
        (run / WANDB_ID).unlink(missing_ok=True)

    def step(self, step: int, lr: float) -> None:
        self.pending.append((step, {"step/lr": lr}))

    def epoch(self, row: dict) -> None:
        at = int(row["epoch"]) * self.steps_per_epoch
        self.pending.append((at, {**_scalars(row), "epoch": int(row["epoch"])}))
        self.flush()

    def flush(self) -> None:
        for step, values in self.pending:  # W&B merges values logged at one step into one row
            self.run.log(values, step=step)
        self.pending.clear()

    def close(self, ok: bool) -> None:
        # Steps after the last checkpoint of a failed run are redone when it resumes: not sent.
        self.pending.clear()
        self.run.finish(exit_code=0 if ok else 1)


def _read_id(run: Path) -> Optional[str]:
    try:
        return json.loads((run / WANDB_ID).read_text())["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Backend:
    wanted: Callable[[RuntimeCfg], bool]
    package: str  # the module it imports
    extra: str  # pip extra of tfkd that provides it
    setting: str  # how a user turns it on
    start: type


BACKENDS: dict[str, Backend] = {
    "tensorboard": Backend(lambda rt: rt.tensorboard, "tensorboard", "tb",
                           "--tensorboard (runtime.tensorboard)", TensorBoard),
    "wandb": Backend(lambda rt: bool(rt.wandb), "wandb", "wandb", "--wandb PROJECT (runtime.wandb)", WandB),
}


def check(runtime: RuntimeCfg) -> None:
    """Before a run writes anything: every tracker asked for can be imported."""
    for b in BACKENDS.values():
        if b.wanted(runtime) and importlib.util.find_spec(b.package) is None:
            raise TfkdError(f"{b.setting} needs the {b.package} package: pip install {b.package} "
                            f"(or pip install -e \".[{b.extra}]\" in a tfkd checkout)")


class Trackers:
    """The trackers of one run, driven together; a context manager that closes them."""

    def __init__(self, trackers: list) -> None:
        self.trackers = trackers

    def step(self, step: int, lr: float) -> None:
        for t in self.trackers:
            t.step(step, lr)

    def epoch(self, row: dict) -> None:
        for t in self.trackers:
            t.epoch(row)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def close(self, ok: bool = True) -> None:
        for t in self.trackers:
            t.close(ok)
        self.trackers = []

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, *exc: object) -> None:
        self.close(kind is None)


NONE = Trackers([])  # what ranks other than the first of a DDP run get


def open(run: Path, recipe: Recipe, start_step: int, steps_per_epoch: int,
         log: Callable[[str], None] = print) -> Trackers:
    """The trackers `recipe.runtime` asks for. `start_step`: steps the run has done (0: a
    fresh run, whose directory may still hold an earlier run's tracker files)."""
    run = Path(run)
    if start_step == 0:
        for b in BACKENDS.values():
            b.start.reset(run)
    return Trackers([b.start(run, recipe, start_step, steps_per_epoch, log)
                     for b in BACKENDS.values() if b.wanted(recipe.runtime)])
