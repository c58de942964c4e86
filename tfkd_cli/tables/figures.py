"""Every figure tfkd draws, and the one place matplotlib is set up (`_pyplot`: the Agg backend,
no display needed):

- table.png (`gain_figure`): each claim's gain, ours (mean ± std) beside the paper's printed gain
  and beside its controls' gains, and at a scale comparable with the paper also the absolute
  accuracies. Inconclusive claims are drawn hatched and grey and labelled "inconclusive": a run
  that did not train gives a large negative gain that must not read as a large failure. A
  partial table (runs unfinished, or cells with fewer seeds than the table's) says "PARTIAL" in
  its title. The results (`results.Results`, from `report.build_results` or table.json) are read
  only by the small helpers under "reading the results".
- curves.png of a table (`table_curves`) and `tfkd plot` / `tfkd compare --plot` (`plot_runs`):
  training curves from the runs' metrics.csv (read by `curves`).
- sweep.png (`sweep_figure`): a sweep's validation top-1 per grid point, the chosen point marked.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tfkd_cli.errors import TfkdError
from tfkd_cli.storage.rundir import atomic_write
from tfkd_cli.tables.controls import KINDS, controls_of
from tfkd_cli.tables.curves import band, cell_curves, find_runs, label_runs, load_curves, pick_metrics
from tfkd_cli.tables.results import Cell, Results

PAPER, OURS = "paper", "tfkd (mean ± std)"
CONTROL = {name: f"{name} control" for name in KINDS.values()}  # control name -> its series
COLORS = {PAPER: "#9aa5b1", OURS: "#2f6fb0", CONTROL[KINDS["uniform"]]: "#d98c2b", CONTROL[KINDS["ce"]]: "#5a9e4b"}
INCONCLUSIVE = {"facecolor": "#ececec", "hatch": "///"}  # the hatch keeps the series' colour


@dataclass(frozen=True)
class ClaimBars:
    """One claim's group of bars: gains in top-1 points, nan where unknown."""
    label: str
    verdict: str  # yes / no / inconclusive / n/a
    paper: float
    ours: float
    ours_err: float
    controls: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (gain, err)


# -- reading the results ------------------------------------------------------------------

def _nan(x: Optional[float]) -> float:
    return math.nan if x is None else x


def _gain_of(a: Cell, b: Cell) -> tuple[float, float]:
    """a mean - b mean, ± sqrt(std_a^2 + std_b^2) (the spread of one seed's gain)."""
    if a.mean is None or b.mean is None:
        return math.nan, 0.0
    return a.mean - b.mean, math.hypot(a.std or 0.0, b.std or 0.0)


def claim_bars(res: Results) -> list[ClaimBars]:
    """Every claim of the table, row by row. A control's gain is its mean minus the claim's
    compared cell (the same baseline as the treated run's gain), as the verdict compares them."""
    out = []
    for r in res.rows:
        for cl in r.claims:
            a, b = r.cells[cl.column], r.cells[cl.baseline]
            ours, err = _gain_of(a, b)
            ctrl = {name: _gain_of(c, b) for name, c in controls_of(r.cells, cl.column).items()}
            out.append(ClaimBars(f"{r.shown or r.label}\n{cl.text}: {cl.verdict}", cl.verdict,
                                 _nan(cl.paper_gain), _nan(cl.gain), err if cl.gain is not None else 0.0, ctrl))
    return out


def cells_plotted(res: Results) -> list[tuple[str, Cell]]:
    """(row + column title, cell) of every cell with a run."""
    titles = {c.key: c.title for c in res.columns}
    return [(f"{r.shown or r.label}\n{titles[key]}", c) for r in res.rows for key, c in r.cells.items() if c.run]


def partial_note(res: Results) -> Optional[str]:
    """Why the table is partial (unfinished runs, cells with fewer seeds than the header's), else None."""
    h = res.header
    if h.runs_finished < h.runs_total:
        return f"PARTIAL: {h.runs_finished}/{h.runs_total} runs finished"
    seeds = len(h.seeds)
    counts = [c.n or 0 for _, c in cells_plotted(res)]
    missing = sum(1 for n in counts if n == 0)  # planned cells outside this run (e.g. --only)
    short = sum(1 for n in counts if 0 < n < seeds)
    notes = ([f"{missing} cell(s) not run"] if missing else []) + \
            ([f"{short} cell(s) with fewer than {seeds} seeds"] if short else [])
    return "PARTIAL: " + "; ".join(notes) if notes else None


def title(res: Results) -> str:
    h = res.header
    text = f"{res.table} at scale {h.scale} on {h.dataset} (seeds {', '.join(map(str, h.seeds))})"
    text += "" if h.comparable_with_paper else " - not comparable with the paper: gains only"
    note = partial_note(res)
    return text + (f"\n{note}" if note else "")


# -- matplotlib ---------------------------------------------------------------------------

def _pyplot():
    """pyplot on the Agg backend (files only: no display on a cluster node or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, dpi: int) -> None:
    """Write `fig` as a PNG to `path` atomically, and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


# -- table.png ----------------------------------------------------------------------------

def gain_figure(res: Results, path: Path) -> None:
    """Draw `build_figure(res)` to `path` (atomically)."""
    fig = build_figure(res)
    _save(_pyplot(), fig, path, dpi=110)


def build_figure(res: Results):
    """The figure of table.png: each claim's gain; at a scale comparable with the paper also
    the absolute accuracies, in a first panel. Absolute numbers of a reduced protocol cannot be
    compared with the paper's, so they are not drawn there. The caller closes it."""
    plt = _pyplot()
    both = res.header.comparable_with_paper
    claims = claim_bars(res)
    per_bar = 0.55 if not any(c.controls for c in claims) else 0.9  # a claim with controls has 4 bars
    n = max(len(cells_plotted(res)) * 0.55 if both else 0, len(claims) * per_bar, 1)
    fig, axes = plt.subplots(2 if both else 1, 1, figsize=(max(8, n + 2), 10 if both else 5.5), squeeze=False)
    if both:
        _absolute_panel(axes[0][0], cells_plotted(res))
    _gain_panel(axes[-1][0], claims)
    fig.suptitle(title(res), fontsize=9, color="black" if partial_note(res) is None else "#b03030")
    fig.tight_layout()
    return fig


def _bars(ax, labels: list[str], series: dict[str, tuple[list[float], list[float]]], ylabel: str) -> dict:
    """Grouped bars: series name -> (heights, errors); returns name -> its BarContainer."""
    xs = list(range(len(labels)))
    width = 0.8 / len(series)
    out = {}
    for i, (name, (heights, err)) in enumerate(series.items()):
        off = (i - (len(series) - 1) / 2) * width
        out[name] = ax.bar([x + off for x in xs], heights, width=width, yerr=err, capsize=2, label=name,
                           color=COLORS.get(name, "#555555"))
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=6)
    ax.set_ylabel(ylabel)
    return out


def _absolute_panel(ax, cells: list[tuple[str, Cell]]) -> None:
    _bars(ax, [label for label, _ in cells], {
        PAPER: ([_nan(c.paper) for _, c in cells], [0.0] * len(cells)),
        OURS: ([_nan(c.mean) for _, c in cells], [c.std or 0.0 for _, c in cells])},
        "top-1 test accuracy (%)")
    ax.legend(fontsize=8)


def _gain_panel(ax, claims: list[ClaimBars]) -> None:
    """Per claim: the paper's gain, ours, and each control's gain over the same baseline;
    an inconclusive claim's measured bars hatched grey and labelled."""
    from matplotlib.patches import Patch

    names = [n for n in KINDS.values() if any(n in c.controls for c in claims)]
    series = {PAPER: ([c.paper for c in claims], [0.0] * len(claims)),
              OURS: ([c.ours for c in claims], [c.ours_err for c in claims])}
    for name in names:
        series[CONTROL[name]] = ([c.controls.get(name, (math.nan, 0.0))[0] for c in claims],
                                     [c.controls.get(name, (math.nan, 0.0))[1] for c in claims])
    bars = _bars(ax, [c.label for c in claims], series, "gain over the claim's baseline (top-1 points)")
    ax.axhline(0.0, color="black", linewidth=0.6)
    handles = [Patch(facecolor=COLORS[name], label=name) for name in series]  # before any bar is hatched
    for i, c in enumerate(claims):
        if c.verdict != "inconclusive":
            continue
        for name in series:  # the paper's bar is the paper's: only ours are in doubt
            if name != PAPER:
                bars[name].patches[i].set(edgecolor=COLORS[name], **INCONCLUSIVE)
        # above the frame, where no bar reaches
        ax.text(i, 1.01, "inconclusive", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=6, color="#555555", gid="inconclusive")
    if any(c.verdict == "inconclusive" for c in claims):
        handles.append(Patch(edgecolor="#555555", label="hatched: inconclusive\n(a run did not train or the\n"
                             "claim was not tested;\ntable.md says why)", **INCONCLUSIVE))
    # outside the axes: a bar of any length can sit under any corner
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))

# -- run curves: tfkd plot, compare --plot, a table's curves.png -------------------------

TITLES = TITLES = {
    "test_top1": "test top-1 (%)", "train_top1": "train top-1 (%, augmented batches)",
    "train_loss": "train loss", "lr": "learning rate (end of epoch)", "test_top5": "test top-5 (%)",
    "test_nll": "test NLL", "test_ece": "test ECE (%)", "teacher_share": "teacher share of the loss",
    "val_top1": "validation top-1 (%)",
}


def _grid(n: int):
    import matplotlib.ticker

    plt = _pyplot()

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


def _save_checked(plt, fig, out: Path) -> None:
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise TfkdError(f"cannot write {out}: folder {out.parent} does not exist")
    _save(plt, fig, out, dpi=100)


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
    label_runs(curves)
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
    _save_checked(plt, fig, out)
    return chosen


def table_curves(res: Results, out: Path, roots: tuple[Path, ...] = (Path("."),)) -> bool:
    """curves.png of a results table: test top-1 per epoch of every cell, mean ± std over
    seeds, one panel per row. Returns False (and writes nothing) when no cell has a run."""
    titles = {c.key: c.title for c in res.columns}
    panels = []
    for r in res.rows:
        lines = []
        for key, cell in r.cells.items():
            curves = cell_curves(cell, roots)
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
    _save_checked(plt, fig, out)
    return True

# -- sweep.png ----------------------------------------------------------------------------

def show_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_figure(res: dict, path: Path) -> None:
    """A heatmap of mean val top-1 for two axes, else a line over the points (one axis: its values); chosen marked."""
    plt = _pyplot()
    axes, pts = res["axes"], res["points"]
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    if len(axes) == 2:
        a, b = axes
        grid = [[_nan(pts[i * len(b["values"]) + j]["val_mean"]) for j in range(len(b["values"]))]
                for i in range(len(a["values"]))]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, label="mean val top-1 (%)")
        for i in range(len(a["values"])):
            for j in range(len(b["values"])):
                p = pts[i * len(b["values"]) + j]
                text = "pending" if p["val_mean"] is None else f"val {p['val_mean']:.1f}\ntest {p['test_mean']:.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if not p["chosen"] else "red",
                        fontweight="bold" if p["chosen"] else "normal")
                if p["chosen"]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
        ax.set_xticks(range(len(b["values"])), [show_value(v) for v in b["values"]])
        ax.set_yticks(range(len(a["values"])), [show_value(v) for v in a["values"]])
        ax.set_xlabel(b["key"])
        ax.set_ylabel(a["key"])
    else:
        xs = list(range(len(pts)))
        labels = [show_value(p["params"][axes[0]["key"]]) for p in pts] if len(axes) == 1 else [p["label"] for p in pts]
        val = [_nan(p["val_mean"]) for p in pts]
        ax.errorbar(xs, val, yerr=[p["val_std"] or 0.0 for p in pts], marker="o", capsize=3, label="val top-1 (chooses)")
        ax.plot(xs, [_nan(p["test_mean"]) for p in pts], marker="s", linestyle="--", color="gray",
                label="test top-1 at val-selected epoch")
        for x, p in zip(xs, pts):
            if p["chosen"]:
                ax.plot([x], [p["val_mean"]], marker="*", markersize=18, color="red", linestyle="none", label="chosen")
        ax.set_xticks(xs, labels, rotation=0 if len(axes) == 1 else 60, ha="center" if len(axes) == 1 else "right",
                      fontsize=8)
        ax.set_xlabel(axes[0]["key"] if len(axes) == 1 else "grid point")
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8)
    ax.set_title(f"sweep {res['sweep']} ({len(res['seeds'])} seed(s)); chosen on val", fontsize=9)
    fig.tight_layout()
    _save(plt, fig, path, dpi=110)
