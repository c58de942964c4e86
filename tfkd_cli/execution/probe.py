"""`reproduce --dry-run --measure`: this machine's training speed against the run records' machines.

`cost.Calibration` scales the estimates by committed run records, so an estimate carries the
speed of the machines that made those records. Machines of one kind differ up to 3x: the same
mini runs (identical recipes, another seed) took 0.55-0.75x as long on one 2-core VM as on the
one that made the records (issue #22). `--measure` times this machine instead of assuming it:

- every training configuration (model, width, batch, dataset, threads, channels_last) of the
  pending runs that committed records trained without a teacher network is trained here for
  two short epochs (PROBE_STEPS steps each) by `tfkd run`, the real training code, `jobs`
  probes at once as the runs will be (two one-thread runs side by side share caches and memory);
- its speed is the second epoch's images/s (timings.csv; the first pays for warm-up);
- the configuration's factor is the records' median images/s over the probe's: above 1 when
  this machine is slower. A run's estimate is multiplied by its configuration's factor (a
  student with a teacher by its own configuration's), a configuration no record trained by the
  median factor of the others.
"""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional

from tfkd_cli.config.recipe import Recipe, dump
from tfkd_cli.data.registry import DATASETS
from tfkd_cli.execution.cost import cpu_records, taught
from tfkd_cli.models import canonical_name
from tfkd_cli.storage import rundir

PROBE_STEPS = 24  # training steps an epoch: enough for a steady images/s, seconds per probe
PROBE_TIMEOUT_S = 300

Key = tuple


def config_key(r: Recipe) -> Key:
    """What sets a run's training speed per image, whatever its method or teacher."""
    return (canonical_name(r.model), round(float(r.width), 6), r.train.batch_size, r.data.dataset,
            r.runtime.threads, bool(r.runtime.channels_last))


def _plain(r: Recipe) -> bool:
    """Trained without a teacher network (a uniform-teacher control counts: no forward)."""
    return not taught(r)


def record_speeds(summaries: Iterable[Path]) -> dict[Key, list[float]]:
    """images/s of the committed CPU records that trained without a teacher network, by configuration."""
    out: dict[Key, list[float]] = {}
    for s, r in cpu_records(summaries):
        if s.get("images_per_s") and _plain(r):
            out.setdefault(config_key(r), []).append(float(s["images_per_s"]))
    return out


def probe_recipe(r: Recipe) -> Recipe:
    """`r` cut to two epochs of PROBE_STEPS steps: same model, width, batch, loss, data and runtime."""
    info = DATASETS.get(r.data.dataset)
    classes = (info.num_classes if info else None) or 100
    per_class = math.ceil(PROBE_STEPS * r.train.batch_size / classes)
    if info and info.num_train:  # a small set (digits) has fewer: the probe then takes fewer steps
        per_class = min(per_class, info.num_train // classes)
    if r.data.per_class:
        per_class = min(per_class, r.data.per_class)
    return replace(r, name="probe",
                   train=replace(r.train, epochs=2, keep_epochs=[], checkpoint_every=0),
                   data=replace(r.data, per_class=per_class, val_per_class=0, download=False),
                   runtime=replace(r.runtime, tensorboard=False, wandb=None, teacher_cache=False))


def _second_epoch_speed(run: Path) -> Optional[float]:
    try:
        with open(run / rundir.TIMINGS, newline="") as fh:
            return float(next(row["images_per_s"] for row in csv.DictReader(fh) if row["epoch"] == "2"))
    except (OSError, KeyError, StopIteration, ValueError):
        return None


def measure(recipes: dict[Key, Recipe], jobs: int, work: Path) -> dict[Key, Optional[float]]:
    """images/s of each configuration's probe here, `jobs` at a time (None: the probe failed)."""
    todo = list(recipes.items())
    speeds: dict[Key, Optional[float]] = {}
    while todo:
        batch, todo = todo[:max(1, jobs)], todo[max(1, jobs):]
        procs = []
        for i, (key, r) in enumerate(batch):
            d = work / f"probe{len(speeds) + i}"
            d.mkdir(parents=True)
            (d / "recipe_in.yaml").write_text(dump(probe_recipe(r)))
            cmd = [sys.executable, "-m", "tfkd_cli", "run", str(d / "recipe_in.yaml"), "--out", str(d / "run"), "--quiet"]
            procs.append((key, d, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        for key, d, proc in procs:
            try:
                ok = proc.wait(PROBE_TIMEOUT_S) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                ok = False
            speeds[key] = _second_epoch_speed(d / "run") if ok else None
    return speeds


@dataclass
class Speed:
    """This machine's factor per configuration (records' images/s over the probe's), with its account."""

    factors: dict[Key, float]

    jobs: int = 1  # the runs' threads are those the runner gives each of `jobs` runs

    def factor(self, r: Recipe) -> float:
        f = self.factors.get(config_key(as_run(r, self.jobs)))
        return f if f is not None else (statistics.median(self.factors.values()) if self.factors else 1.0)

    def describe(self) -> str:
        if not self.factors:
            return "--measure: no configuration of the pending runs has a record to compare with; estimates unscaled"
        lo, hi = min(self.factors.values()), max(self.factors.values())
        span = f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}"
        return (f"x{span} for this machine (--measure: {len(self.factors)} configurations trained here, "
                "against the records' images/s)")


def as_run(r: Recipe, jobs: int) -> Recipe:
    """`r` with the CPU threads the local runner gives each of `jobs` runs (runner._Scheduler)."""
    from tfkd_cli.execution.runner import usable_cores

    threads = max(1, usable_cores() // jobs) if jobs > 1 else r.runtime.threads
    return replace(r, runtime=replace(r.runtime, threads=threads, device="cpu"))


def measure_speed(pending: list[Recipe], summaries: Iterable[Path], jobs: int,
                  work: Optional[Path] = None) -> Speed:
    """Probe each configuration of the `pending` runs' plain recipes that records trained (module doc)."""
    recorded = record_speeds(summaries)
    chosen: dict[Key, Recipe] = {}
    for r in (as_run(r, jobs) for r in pending):
        if _plain(r) and config_key(r) in recorded:
            chosen.setdefault(config_key(r), r)
    if not chosen:
        return Speed({})
    with tempfile.TemporaryDirectory(prefix="tfkd-probe-", dir=work) as tmp:
        speeds = measure(chosen, jobs, Path(tmp))
    return Speed({k: statistics.median(recorded[k]) / v for k, v in speeds.items() if v}, jobs)
