"""Training curves from metrics.csv: `tfkd plot`, `tfkd compare --plot` and a table's curves.png.

Every column of a run's metrics.csv other than `epoch` is a metric that can be drawn; the
defaults are the ones a reader checks first, and optional columns (teacher_share, val_top1)
are drawn wherever a run has them. All numbers come from the runs' files.
"""

from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from tfkd_cli import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.rundir import atomic_write

if TYPE_CHECKING:
    from tfkd_cli.reproduce.results import Cell, Results

DEFAULT_METRICS = ("test_top1", "train_top1", "train_loss", "lr", "teacher_share", "val_top1")
TITLES = {
    "test_top1": "test top-1 (%)", "train_top1": "train top-1 (%, augmented batches)",
    "train_loss": "train loss", "lr": "learning rate (end of epoch)", "test_top5": "test top-5 (%)",
    "test_nll": "test NLL", "test_ece": "test ECE (%)", "teacher_share": "teacher share of the loss",
    "val_top1": "validation top-1 (%)",
}


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


def _labels(curves: list[Curves]) -> None:
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


def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cols = 2 if n == 4 else min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole
    return plt, fig, list(axes.flat[:n])


def _epoch_axis(ax, last: int) -> None:
    """Whole epochs from 1; half an epoch of margin so a one-epoch curve is a visible point."""
    ax.set_xlim(0.5, last + 0.5)
    if last <= 10:  # MaxNLocator falls back to fractional ticks on a one-epoch range
        ax.set_xticks(range(1, last + 1))
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _save(plt, fig, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise TfkdError(f"cannot write {out}: folder {out.parent} does not exist")
    atomic_write(out, lambda f: f.write(buf.getvalue()))


def plot_runs(paths: list[Path], out: Path, metrics: Optional[list[str]] = None,
              log: Callable[[str], None] = print) -> list[str]:
    """Draw runs on shared axes, one panel per metric; returns the metrics drawn."""
    curves, empty = [], []
    for p in find_runs(paths):
        try:
            curves.append(load_curves(p))
        except TfkdError as e:
            empty.append(str(e))
    if not curves:
        raise TfkdError(empty[0] if len(empty) == 1 else
                        f"none of the {len(empty)} runs has a finished epoch yet (metrics.csv is missing or empty)")
    for e in empty:
        log(f"note: skipped {e}")
    _labels(curves)
    chosen = pick_metrics(curves, metrics)
    plt, fig, axes = _grid(len(chosen))
    for ax, m in zip(axes, chosen):
        for c in curves:
            if m in c.columns:
                ax.plot(c.epochs, c.columns[m], marker="o" if len(c.epochs) < 12 else None,
                        markersize=3, label=c.name)
        ax.set_title(TITLES.get(m, m), fontsize=9)
        _epoch_axis(ax, max(e for c in curves for e in c.epochs))
    axes[0].legend(fontsize=7)
    _save(plt, fig, out)
    return chosen


# -- a results table's curves --------------------------------------------------------


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


def _cell_curves(cell: Cell, roots: tuple[Path, ...] = (Path("."),)) -> list[Curves]:
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


def table_curves(res: Results, out: Path, roots: tuple[Path, ...] = (Path("."),)) -> bool:
    """curves.png of a results table: test top-1 per epoch of every cell, mean ± std over
    seeds, one panel per row. Returns False (and writes nothing) when no cell has a run."""
    titles = {c.key: c.title for c in res.columns}
    panels = []
    for r in res.rows:
        lines = []
        for key, cell in r.cells.items():
            curves = _cell_curves(cell, roots)
            if curves:
                label = titles.get(key, key) + (f" ({cell.name})" if cell.name else "")
                lines.append((label + f", n={len(curves)}", band(curves)))
        if lines:
            panels.append((r.shown or r.label, lines))
    if not panels:
        return False
    plt, fig, axes = _grid(len(panels))
    for ax, (label, lines) in zip(axes, panels):
        for name, (epochs, mean, std) in lines:
            (line,) = ax.plot(epochs, mean, marker="o" if len(epochs) < 12 else None, markersize=3, label=name)
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("test top-1 (%)", fontsize=8)
        _epoch_axis(ax, max(e for _, (epochs, _m, _s) in lines for e in epochs))
        ax.legend(fontsize=6)
    fig.suptitle(f"{res.table} at scale {res.header.scale}: test top-1 per epoch, mean ± std over seeds",
                 fontsize=10)
    _save(plt, fig, out)
    return True
