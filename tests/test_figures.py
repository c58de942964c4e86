"""table.png (tables/figures.py): what the gain panel draws, read off the matplotlib artists
of `build_figure` before anything is saved. Fixtures: hand-built table.json dicts read through
`Results.from_dict` (the schema), numbers from the committed smoke table (results/table3/smoke)."""

import copy
import math
from pathlib import Path

import matplotlib
import pytest
from matplotlib.container import BarContainer

from tfkd_cli.tables import results as R
from tfkd_cli.tables.figures import CONTROL, OURS, PAPER, build_figure, gain_figure, partial_note

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNIFORM, CE = CONTROL["uniform teacher"], CONTROL["ce x (1-a)"]


def cell(mean, n=1, std=0.0, paper=None):
    return {"run": "r", "mean": mean, "std": std, "n": n, "paper": paper}


def row(label, verdict, student, dekd, uniform=None, ce=None, paper_gain=2.0):
    cells = {"student": cell(student), "dekd": cell(dekd)}
    if uniform is not None:
        cells.update({"dekd~uniform": cell(uniform), "dekd~ce": cell(ce)})
    claim = {"text": "De-KD improved the student", "column": "dekd", "baseline": "student", "verdict": verdict,
             "gain": dekd - student, "paper_gain": paper_gain}
    return {"label": label, "cells": cells, "claims": [claim]}


def results(rows, seeds=(0,), finished=3, total=3, comparable=False):
    keys = ("student", "dekd", "dekd~uniform", "dekd~ce")
    return R.Results.from_dict({"table": "table3", "columns": [{"key": k, "title": k} for k in keys],
                                "rows": rows, "header": {"scale": "smoke", "dataset": "digits", "seeds": list(seeds),
                                                         "comparable_with_paper": comparable,
                                                         "runs_finished": finished, "runs_total": total}})


# ResNet18 -> MobileNetV2 (controls starved: inconclusive), ResNet50 -> ResNet18 (no), one yes
SMOKE = [row("R18 -> MV2", "inconclusive", 26.94, 10.28, 11.67, 10.28),
         row("R50 -> R18", "no", 74.17, 9.72, 82.22, 80.28),
         row("made up", "yes", 70.0, 73.0, 71.0, 70.5)]


def gain_bars(fig) -> dict:
    ax = fig.axes[-1]
    return {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}, ax


@pytest.fixture
def figure():
    figs = []

    def make(res):
        figs.append(build_figure(res))
        return figs[-1]

    yield make
    for f in figs:
        plt.close(f)


def test_inconclusive_claims_are_hatched_and_labelled(figure):
    bars, ax = gain_bars(figure(results(SMOKE)))
    assert set(bars) == {PAPER, OURS, UNIFORM, CE}
    hatched = {name: [bool(p.get_hatch()) for p in c.patches] for name, c in bars.items()}
    assert hatched[OURS] == hatched[UNIFORM] == hatched[CE] == [True, False, False]  # only claim 0
    assert hatched[PAPER] == [False, False, False]  # the paper's gain is not in doubt
    labels = [t for t in ax.texts if t.get_text() == "inconclusive"]
    assert len(labels) == 1 and labels[0].get_position()[0] == 0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("hatched: inconclusive") for t in legend)


def test_controls_gains_beside_the_treated_gain(figure):
    bars, _ = gain_bars(figure(results(SMOKE)))
    height = {name: [p.get_height() for p in c.patches] for name, c in bars.items()}
    # R50 -> R18: De-KD 9.72 - 74.17; controls over the same baseline: 82.22 - 74.17, 80.28 - 74.17
    assert height[OURS][1] == pytest.approx(-64.45)
    assert height[UNIFORM][1] == pytest.approx(8.05) and height[CE][1] == pytest.approx(6.11)
    assert height[PAPER] == [2.0, 2.0, 2.0]
    # each claim's bars sit side by side around its tick: paper, ours, uniform, ce
    xs = [bars[name].patches[1].get_x() for name in (PAPER, OURS, UNIFORM, CE)]
    assert xs == sorted(xs) and 0.5 < xs[0] and xs[-1] < 1.5


def test_no_controls_no_control_bars_no_inconclusive_legend(figure):
    rows = [row("a", "yes", 70.0, 73.0), row("b", "no", 70.0, 69.0)]
    bars, ax = gain_bars(figure(results(rows)))
    assert set(bars) == {PAPER, OURS}
    assert not any(p.get_hatch() for c in bars.values() for p in c.patches)
    assert not [t for t in ax.texts if t.get_text() == "inconclusive"]
    assert not any("inconclusive" in t.get_text() for t in ax.get_legend().get_texts())


def test_a_partial_table_says_so(figure):
    assert partial_note(results(SMOKE)) is None
    assert "PARTIAL" not in figure(results(SMOKE))._suptitle.get_text()
    unfinished = results(SMOKE, finished=2, total=3)
    assert partial_note(unfinished) == "PARTIAL: 2/3 runs finished"
    assert "PARTIAL: 2/3 runs finished" in figure(unfinished)._suptitle.get_text()
    # every run finished, but a slice of 2 of 3 seeds: 8 cells have n = 2 < 3
    rows = copy.deepcopy(SMOKE)
    for r in rows:
        for c in r["cells"].values():
            c["n"] = 2
    rows[0]["cells"]["student"]["n"] = 3
    sliced = results(rows, seeds=(0, 1, 2))
    assert partial_note(sliced) == "PARTIAL: 11 cell(s) with fewer than 3 seeds"
    assert "PARTIAL" in figure(sliced)._suptitle.get_text()
    # a table run with --only: the cells outside it have no seed at all, and say so apart
    rows[1]["cells"]["student"]["n"] = 0
    rows[2]["cells"]["student"]["n"] = 0
    only = results(rows, seeds=(0, 1, 2))
    assert partial_note(only) == "PARTIAL: 2 cell(s) not run; 9 cell(s) with fewer than 3 seeds"
    for r in rows:
        for c in r["cells"].values():
            c["n"] = c["n"] and 1
    assert partial_note(results(rows, seeds=(0,))) == "PARTIAL: 2 cell(s) not run"


def test_comparable_scale_adds_the_absolute_panel(figure):
    fig = figure(results(SMOKE, comparable=True))
    assert len(fig.axes) == 2
    absolute = {c.get_label(): c for c in fig.axes[0].containers if isinstance(c, BarContainer)}
    assert [p.get_height() for p in absolute[OURS].patches][:2] == [26.94, 10.28]


def test_committed_smoke_table_renders(tmp_path, figure):
    """The committed table.json (read only): one hatched group per inconclusive claim, and the
    PNG written elsewhere."""
    res = R.read(Path(__file__).parents[1] / "results/table3/smoke/table.json")
    verdicts = [cl.verdict for cl in res.claims()]
    bars, ax = gain_bars(figure(res))
    assert [bool(p.get_hatch()) for p in bars[OURS].patches] == [v == "inconclusive" for v in verdicts]
    assert len([t for t in ax.texts if t.get_text() == "inconclusive"]) == verdicts.count("inconclusive")
    assert not any(math.isnan(p.get_height()) for p in bars[UNIFORM].patches)
    gain_figure(res, tmp_path / "table.png")
    assert (tmp_path / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
