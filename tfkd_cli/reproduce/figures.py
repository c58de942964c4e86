"""table.png: each claim's gain, ours (mean ± std) beside the paper's printed gain, and at a
scale comparable with the paper also the absolute accuracies."""

from __future__ import annotations

import io
import math
from pathlib import Path

from tfkd_cli.checkpoint import atomic_write


def gain_figure(res: dict, path: Path) -> None:
    """Each claim's gain (ours mean ± std beside the paper's printed gain); at a scale
    comparable with the paper also the absolute accuracies, in a first panel. Absolute numbers
    of a reduced protocol cannot be compared with the paper's, so they are not drawn there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = res["header"]
    both = h["comparable_with_paper"]
    claims = sum(len(r["claims"]) for r in res["rows"])
    n = max(len(_cells_plotted(res)) if both else 0, claims, 1)  # bars in the widest panel
    fig, axes = plt.subplots(2 if both else 1, 1, figsize=(max(8, 0.55 * n + 2), 10 if both else 5.5), squeeze=False)
    if both:
        _absolute_panel(axes[0][0], res)
    _gain_panel(axes[-1][0], res)
    fig.suptitle(f"{res['table']} at scale {h['scale']} on {h['dataset']} (seeds {len(h['seeds'])})"
                 + ("" if both else " - not comparable with the paper: gains only"), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _cells_plotted(res: dict) -> list[tuple[str, dict]]:
    out = []
    for r in res["rows"]:
        for key, c in r["cells"].items():
            if c.get("run"):
                col = next(cc["title"] for cc in res["columns"] if cc["key"] == key)
                out.append((f"{r['label']}\n{col}", c))
    return out


def _bars(ax, labels: list[str], paper: list[float], ours: list[float], err: list[float], ylabel: str) -> None:
    xs = list(range(len(labels)))
    ax.bar([x - 0.2 for x in xs], paper, width=0.4, label="paper", color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], ours, width=0.4, yerr=err, capsize=2, label="tfkd (mean ± std)", color="#2f6fb0")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=6)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def _absolute_panel(ax, res: dict) -> None:
    cells = _cells_plotted(res)
    nan = lambda x: math.nan if x is None else x  # noqa: E731
    _bars(ax, [label for label, _ in cells], [nan(c.get("paper")) for _, c in cells],
          [nan(c.get("mean")) for _, c in cells], [c.get("std") or 0.0 for _, c in cells], "top-1 test accuracy (%)")


def _gain_panel(ax, res: dict) -> None:
    """Per claim: our gain (treated - compared mean), ± sqrt(std_a^2 + std_b^2), and the paper's."""
    labels, paper, ours, err = [], [], [], []
    for r in res["rows"]:
        for cl in r["claims"]:
            a, b = r["cells"][cl["column"]], r["cells"][cl["baseline"]]
            labels.append(f"{r['label']}\n{cl['text']}: {cl['verdict']}")
            paper.append(math.nan if cl.get("paper_gain") is None else cl["paper_gain"])
            ours.append(math.nan if cl.get("gain") is None else cl["gain"])
            err.append(math.hypot(a.get("std") or 0.0, b.get("std") or 0.0) if cl.get("gain") is not None else 0.0)
    _bars(ax, labels, paper, ours, err, "gain of the claim (top-1 points)")
    ax.axhline(0.0, color="black", linewidth=0.6)
