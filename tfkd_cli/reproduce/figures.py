"""table.png: each claim's gain, ours (mean ± std) beside the paper's printed gain and beside
its controls' gains, and at a scale comparable with the paper also the absolute accuracies.

Inconclusive claims are drawn hatched and grey and labelled "inconclusive": a run that did not
train gives a large negative gain that must not read as a large failure. A partial table (runs
unfinished, or cells with fewer seeds than the table's) says "PARTIAL" in its title.

The results (`results.Results`, from `report.build_results` or table.json) are read only by the
small helpers under "reading the results".
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tfkd_cli.reproduce.controls import KINDS, controls_of
from tfkd_cli.reproduce.results import Cell, Results
from tfkd_cli.rundir import atomic_write

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
    short = sum(1 for _, c in cells_plotted(res) if (c.n or 0) < seeds)
    return f"PARTIAL: {short} cell(s) with fewer than {seeds} seeds" if short else None


def title(res: Results) -> str:
    h = res.header
    text = f"{res.table} at scale {h.scale} on {h.dataset} (seeds {len(h.seeds)})"
    text += "" if h.comparable_with_paper else " - not comparable with the paper: gains only"
    note = partial_note(res)
    return text + (f"\n{note}" if note else "")


# -- drawing ------------------------------------------------------------------------------

def gain_figure(res: Results, path: Path) -> None:
    """Draw `build_figure(res)` to `path` (atomically)."""
    import matplotlib.pyplot as plt

    fig = build_figure(res)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def build_figure(res: Results):
    """The figure of table.png: each claim's gain; at a scale comparable with the paper also
    the absolute accuracies, in a first panel. Absolute numbers of a reduced protocol cannot be
    compared with the paper's, so they are not drawn there. The caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
