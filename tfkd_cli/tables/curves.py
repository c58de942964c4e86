"""Training curves read from the runs' metrics.csv: one run as columns (`load_curves`), the runs
a path names (`find_runs`), the metrics to draw (`pick_metrics`), a table cell's runs
(`cell_curves`) and their mean ± std over seeds (`band`). `figures` draws them.

Every column of a run's metrics.csv other than `epoch` is a metric that can be drawn; the
defaults are the ones a reader checks first, and optional columns (teacher_share, val_top1)
are drawn wherever a run has them. All numbers come from the runs' files.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tfkd_cli.errors import TfkdError
from tfkd_cli.storage import rundir
from tfkd_cli.tables.results import Cell

DEFAULT_METRICS = ("test_top1", "train_top1", "train_loss", "lr", "teacher_share", "val_top1")


@dataclass
class Curves:
    """One run's metrics.csv as columns: epoch numbers and, per metric, a value per epoch."""

    name: str
    path: Path
    epochs: list[int]
    columns: dict[str, list[float]]


def _number(text: Optional[str]) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):  # an empty cell: a column a run added later, or none
        return math.nan


def load_curves(run: Path) -> Curves:
    """Read one run directory; an unreadable or epoch-less run is a one-line error."""
    run = Path(run)
    try:
        rows = rundir.read_metrics(run)
    except (OSError, UnicodeDecodeError) as e:
        raise TfkdError(f"cannot read {run / rundir.METRICS}: {e}") from None
    if not rows or "epoch" not in rows[0]:
        raise TfkdError(f"{run}: no finished epoch yet (metrics.csv is missing or empty)")
    try:
        epochs = [int(r["epoch"]) for r in rows]
    except (TypeError, ValueError):
        raise TfkdError(f"{run / rundir.METRICS}: the epoch column is damaged") from None
    names = [k for k in rows[0] if k and k != "epoch"]
    columns = {k: [_number(r.get(k)) for r in rows] for k in names}
    return Curves(run.name, run, epochs, columns)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories named, or held one level down in a folder of runs (e.g. runs/)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise TfkdError(f"not a folder: {p}")
        if _is_run(p):
            found.append(p)
            continue
        inner = sorted(q for q in p.iterdir() if q.is_dir() and _is_run(q))
        if not inner:
            raise TfkdError(f"{p} holds no run (a run directory has metrics.csv or summary.json)")
        found += inner
    return found


def _is_run(p: Path) -> bool:
    return (p / rundir.METRICS).is_file() or (p / rundir.SUMMARY).is_file()


def label_runs(curves: list[Curves]) -> None:
    """Legends are run names; where two share a name, their parent folder tells them apart."""
    names = [c.name for c in curves]
    for c in curves:
        if names.count(c.name) > 1:
            c.name = f"{c.path.parent.name}/{c.path.name}"


def pick_metrics(curves: list[Curves], wanted: Optional[list[str]]) -> list[str]:
    """The metrics to draw: the defaults some run has, or the ones asked for (checked)."""
    available = [m for c in curves for m in c.columns]
    available = list(dict.fromkeys(available))
    if not wanted:
        return [m for m in DEFAULT_METRICS if m in available]
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise TfkdError(f"unknown metric {', '.join(map(repr, unknown))}; available: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def band(runs: list[Curves], metric: str = "test_top1") -> tuple[list[int], list[float], list[float]]:
    """Mean and std over seeds per epoch (over the seeds that reached it; std 0 for one)."""
    by_epoch: dict[int, list[float]] = {}
    for c in runs:
        for e, v in zip(c.epochs, c.columns.get(metric, [])):
            if not math.isnan(v):
                by_epoch.setdefault(e, []).append(v)
    epochs = sorted(by_epoch)
    mean = [statistics.fmean(by_epoch[e]) for e in epochs]
    std = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, mean, std


def cell_curves(cell: Cell, roots: tuple[Path, ...] = (Path("."),)) -> list[Curves]:
    """The finished runs of a table cell (named by their directory, as results record them, and
    found in the first of `roots` that holds them: a runs folder, or a table's records);
    a cell read at an epoch (De-KD teachers) stops there."""
    out = []
    for d in cell.runs:
        # an absolute path (older tables) stays as it is
        run = next((r / d for r in roots if (r / d / rundir.METRICS).is_file()), None)
        if run is None:  # the authors' released file: no curve
            continue
        c = load_curves(run)
        stop = cell.run_epoch
        if stop:
            keep = [i for i, e in enumerate(c.epochs) if e <= stop]
            c = Curves(c.name, c.path, [c.epochs[i] for i in keep],
                       {k: [v[i] for i in keep] for k, v in c.columns.items()})
        out.append(c)
    return out
