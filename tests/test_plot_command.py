"""`tfkd plot`, `tfkd compare --plot` and a table's curves.png, on real tiny digits runs."""

import csv
import math
import shutil
import statistics

import pytest
from click.testing import CliRunner

from tfkd_cli.tables import curves, figures
from tfkd_cli.storage import rundir
from tfkd_cli.cli.main import cli

# 160 images / batch 32 = 5 steps per epoch; two epochs.
TINY = ["--dataset", "digits", "--epochs", "2", "--per-class", "16", "--batch-size", "32", "--width", "0.125",
        "--quiet", "--device", "cpu", "--set", "runtime.threads=1"]
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args, code=0):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots") / "runs"
    run("train-teacher", *TINY, "--out", root / "r18")
    run("train-teacher", *TINY, "--model", "mobilenetv2", "--method", "lsr", "--seed", "1", "--out", root / "mv2")
    return root


def test_plot_two_runs_writes_a_png_of_the_default_metrics(runs, tmp_path):
    out = tmp_path / "two.png"
    r = run("plot", runs / "r18", runs / "mv2", "--out", out)
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
    # every run records teacher_share (issue #17; lsr's is its smoothing term), no run here has a val split
    assert "(test_top1, train_top1, train_loss, lr, teacher_share)" in r.stdout


def test_plot_a_folder_of_runs_and_chosen_metrics(runs, tmp_path):
    out = tmp_path / "ece.png"
    r = run("plot", runs, "--metric", "test_ece,test_nll", "--out", out)
    assert out.read_bytes().startswith(PNG) and "(test_ece, test_nll)" in r.stdout


def test_optional_columns_are_drawn_where_a_run_has_them(runs, tmp_path):
    """teacher_share / val_top1 are columns some runs have: drawn by default when present."""
    extra = tmp_path / "runs" / "r18x"
    shutil.copytree(runs / "r18", extra)
    rows = rundir.read_metrics(extra)
    for i, r in enumerate(rows):
        r["teacher_share"] = 0.5 + 0.1 * i
    rundir.write_metrics(extra, rows)
    out = tmp_path / "share.png"
    r = run("plot", runs / "mv2", extra, "--out", out)
    assert "(test_top1, train_top1, train_loss, lr, teacher_share)" in r.stdout
    c = curves.load_curves(extra)
    assert c.columns["teacher_share"] == [0.5, 0.6] and c.epochs == [1, 2]
    assert math.isnan(curves._number(""))  # a run without the column reads as missing, not 0


def test_unknown_metric_names_the_available_ones(runs, tmp_path):
    r = run("plot", runs / "r18", "--metric", "test_top1,accuracy", "--out", tmp_path / "x.png", code=2)
    line = r.stderr.strip()
    assert "\n" not in line and "unknown metric 'accuracy'" in line
    available = line.split("available: ")[1].split(", ")
    assert {"lr", "train_loss", "train_top1", "test_top1", "test_top5", "test_nll", "test_ece"} <= set(available)
    assert not (tmp_path / "x.png").exists()


def test_a_folder_without_runs_is_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    r = run("plot", tmp_path / "empty", code=2)
    assert r.stderr.strip() == f"tfkd: error: {tmp_path / 'empty'} holds no run (a run directory has metrics.csv or summary.json)"
    r = run("plot", tmp_path / "nope", code=2)
    assert r.stderr.strip() == f"tfkd: error: not a folder: {tmp_path / 'nope'}"


def test_runs_with_no_finished_epoch(runs, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(runs / "r18" / rundir.SUMMARY, fresh / rundir.SUMMARY)  # a run killed in its first epoch
    r = run("plot", fresh, "--out", tmp_path / "f.png", code=2)
    assert r.stderr.strip() == f"tfkd: error: {fresh}: no finished epoch yet (metrics.csv is missing or empty)"
    assert not (tmp_path / "f.png").exists()
    r = run("plot", fresh, runs / "r18", "--out", tmp_path / "g.png")  # the others are still drawn
    assert f"note: skipped {fresh}: no finished epoch" in r.stderr and (tmp_path / "g.png").exists()


def test_compare_plot(runs, tmp_path):
    out = tmp_path / "cmp.png"
    r = run("compare", runs / "r18", runs / "mv2", "--format", "csv", "--plot", out)
    assert "r18" in r.stdout and out.read_bytes().startswith(PNG)
    res = tmp_path / "res"
    res.mkdir()
    (res / "table.json").write_text("{}")
    r = run("compare", res, "--plot", tmp_path / "no.png", code=2)
    assert "--plot draws run directories" in r.stderr and not (tmp_path / "no.png").exists()


def _metric(run_dir, col):
    with open(run_dir / rundir.METRICS) as f:
        return [float(r[col]) for r in csv.DictReader(f)]


def test_band_is_mean_and_std_over_seeds(runs):
    a, b = curves.load_curves(runs / "r18"), curves.load_curves(runs / "mv2")
    epochs, mean, std = curves.band([a, b])
    ta, tb = _metric(runs / "r18", "test_top1"), _metric(runs / "mv2", "test_top1")
    assert epochs == [1, 2]
    assert mean == [statistics.fmean(p) for p in zip(ta, tb)]
    assert std == [statistics.stdev(p) for p in zip(ta, tb)]
    assert curves.band([a]) == ([1, 2], ta, [0.0, 0.0])


def test_table_curves(runs, tmp_path):
    """One panel per row; a cell read at an epoch (De-KD teacher) stops there; released files are skipped."""
    from dataclasses import replace

    from tfkd_cli.tables.results import Results

    table = {"table": "t", "header": {"scale": "tiny"},
             "columns": [{"key": "teacher", "title": "Pt-Teacher"}, {"key": "student", "title": "Student"}],
             "rows": [{"label": "row A", "cells": {
                 "teacher": {"name": "ResNet18", "runs": [str(runs / "r18")], "run_epoch": 1},
                 "student": {"runs": [str(runs / "r18"), str(runs / "mv2")], "run_epoch": None}}},
                 {"label": "row B", "cells": {"teacher": {"runs": [str(tmp_path / "base_resnet18")]}}}]}
    res = Results.from_dict(table)  # a table.json of older code: no schema field
    out = tmp_path / "curves.png"
    assert figures.table_curves(res, out) and out.read_bytes().startswith(PNG)
    cut = curves.cell_curves(res.rows[0].cells["teacher"])
    assert [c.epochs for c in cut] == [[1]] and cut[0].columns["test_top1"] == _metric(runs / "r18", "test_top1")[:1]
    assert curves.cell_curves(res.rows[1].cells["teacher"]) == []
    empty = replace(res, rows=res.rows[1:])
    assert not figures.table_curves(empty, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
