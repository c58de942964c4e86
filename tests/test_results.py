"""table.json's schema (tables/results.py): typed results written and read through one
pair, tables from older code recognised as such, tables from newer code refused."""

import json
from pathlib import Path

import pytest

from tfkd_cli.errors import TfkdError
from tfkd_cli.tables import report
from tfkd_cli.tables.results import (SCHEMA_VERSION, Cell, Claim, Column, Failure, Header, Pick, Provenance, Regime,
                                        Results, Row, TeacherFile, read)

from conftest import fail

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "results" / "table3" / "smoke" / "table.json"
ARCHIVE = ROOT / "results" / "archive" / "table3-mini-v2" / "table.json"  # written before the schema field


def every_field() -> Results:
    """A table with every kind of field set: a cell with a run (picks, teachers, gain), one
    without, a claim with controls and one without, a failed run and provenance."""
    run = Cell(name="ResNet18", paper=70.1, paper_std=0.2, run="r", epoch=51, mean=60.5, std=0.5, n=2,
               values=[60.0, 61.0], n_planned=3, best_mean=60.5, last_mean=60.0, train_top1_mean=80.0,
               runs=["r_s0", "r_s1"], teachers=[TeacherFile("tfkd-run", "t_s0/epoch_2.pt", "ab" * 32, 40.0)],
               n_selected=0, run_epoch=2, ratio=0.2, picks=[Pick(2, 40.0, 60.0, 0.66)], method="kd",
               teacher_share_first=0.9, teacher_share_last=0.7, delta_paper=-9.6, gain_over={"base": 0.5})
    base = Cell(name="M", paper=69.0, run="b", mean=60.0, std=0.0, n=1, values=[60.0], method="ce")
    paper_only = Cell(paper=71.0, n=0)
    claims = [Claim("KD improved", "improves", "kd", "base", 0.5, 1.1, "yes", None, "yes", "1 seed",
                    "inconclusive", "1 seed: the noise against u is unknown"),
              Claim("matches", "matches", "kd", "base", 0.5, 1.1, "inconclusive", "baseline did not train", "yes")]
    header = Header(scale="smoke", scale_description="digits", comparable_with_paper=False, dataset="digits",
                    seeds=[0, 1], runs_total=4, runs_finished=3, runs_failed=[Failure("x", "NaN loss")],
                    runs_missing=["x"], compute_time_s=12.5, compute_train_only_runs=0,
                    generated="2026-01-01T00:00:00+00:00", generated_by="abc",
                    provenance=Provenance("0.1", "abc", "2.5", "0.20", "3.11", "cpu", "2-core"),
                    git_commits=["abc"], val_selected=False, record_gaps=["x: no top1"], overrides=["width=0.5"],
                    regime=[Regime("M", "b", 60.0, 70.0, 10.0, True),
                            Regime("R", "r", 9.0, 12.0, 3.0, False, "train - test +3.00 < 5 points", "narrow")])
    return Results(table="t", title="toy", source="none", status="partial", paper_dataset="CIFAR-100",
                   columns=[Column("base", "Base"), Column("kd", "KD"), Column("p", "Paper only")],
                   rows=[Row("R (51 ep)", "R (2 ep)", None, {"base": base, "kd": run, "p": paper_only}, claims)],
                   notes=["a note"], header=header)


def test_round_trip_is_identity():
    res = every_field()
    assert Results.from_dict(res.to_dict()) == res
    assert Results.from_dict(json.loads(res.to_json())) == res
    assert res.to_dict()["schema"] == SCHEMA_VERSION and not res.older


def test_what_is_left_out_is_what_older_tables_left_out():
    """The keys a cell without a run, a claim without controls and a header without a finished
    run never had stay out, so table.json changes by the schema field alone."""
    res = every_field()
    cells = res.to_dict()["rows"][0]["cells"]
    assert list(cells["p"]) == ["name", "paper", "paper_std", "paper_gain", "note", "run", "epoch", "mean", "std", "n"]
    assert list(cells["kd"])[-1] == "gain_over" and "gain_over" not in cells["base"]
    claims = res.to_dict()["rows"][0]["claims"]
    assert "controls_verdict" in claims[0] and "controls_verdict" not in claims[1]
    header = res.header.to_dict()
    assert list(header)[13:22] == ["generated_by", "tfkd", "git_commit", "torch", "torchvision", "python", "device",
                                   "hardware", "git_commits"]
    res.header.provenance = None
    assert "tfkd" not in res.header.to_dict() and Header.from_dict(res.header.to_dict()).provenance is None


def test_committed_table_is_written_back_as_it_was():
    """Read and written again, the committed smoke table is the same text but the schema line."""
    text = SMOKE.read_text()
    data = json.loads(text)
    out = Results.from_dict(data).to_dict()
    assert out.pop("schema") == SCHEMA_VERSION
    data.pop("schema", None)
    assert json.dumps(out, indent=2) == json.dumps(data, indent=2)


def test_an_older_table_is_read_and_recognised():
    """The archived mini tables predate the schema field and several keys: version 1, the
    missing keys None or empty, and the numbers as they were."""
    data = json.loads(ARCHIVE.read_text())
    assert "schema" not in data
    res = read(ARCHIVE.parent)
    assert res.schema == 1 and res.older
    row = res.rows[0]
    assert "shown" not in data["rows"][0] and row.shown is None
    assert row.cells["student"].n_planned is None and row.cells["student"].picks == []
    assert res.header.generated_by is None and res.header.runs_missing == [] and res.header.val_selected is None
    assert row.cells["student"].mean == data["rows"][0]["cells"]["student"]["mean"]
    assert res.header.provenance.hardware == data["header"]["hardware"]
    again = Results.from_dict(res.to_dict())  # written again it is the current version
    assert again.schema == SCHEMA_VERSION and again.rows == res.rows


def test_a_hand_written_table_reads_with_defaults():
    res = Results.from_dict({"table": "t", "rows": [{"label": "a", "cells": {"x": {"mean": 1.0}}}]})
    cell = res.rows[0].cells["x"]
    assert (cell.mean, cell.n, cell.runs, res.header.seeds, res.header.provenance) == (1.0, None, [], [], None)
    assert res.schema == 1


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99])
def test_a_newer_table_is_refused(version, tmp_path):
    with pytest.raises(TfkdError, match=f"schema version {version} is newer than this tfkd reads "
                                        f"\\(1 to {SCHEMA_VERSION}\\); update tfkd"):
        Results.from_dict({"schema": version, "table": "t"})
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "table.json").write_text(json.dumps({**every_field().to_dict(), "schema": version}))
    line = fail(["compare", folder])
    assert str(folder / "table.json") in line and f"schema version {version} is newer" in line
    assert report.read_table(folder) is None  # reproduce has no older table to list changes against


@pytest.mark.parametrize("version", ["2", 0, None, 2.0])
def test_an_unknown_version_is_refused(version):
    with pytest.raises(TfkdError, match="unknown schema version"):
        Results.from_dict({"schema": version})


def test_cell_changes_match_rows_by_key_and_show_the_epoch_used():
    """A re-run is compared cell by cell with the committed table: rows match by their key (the
    recipe's label) and each line shows the row as the new table does, with its pt-teacher epoch."""
    from tfkd_cli.tables.report import cell_changes
    before = Results(rows=[Row("R (51 ep) -> S", "R (ep 3: 0.84 of final, paper 0.59) -> S",
                               None, {"kd": Cell(mean=10.0, n=1), "base": Cell(mean=50.0, n=1)})])
    after = Results(rows=[Row("R (51 ep) -> S", "R (ep 4: 0.52 of final, paper 0.59) -> S",
                              None, {"kd": Cell(mean=12.5, n=1), "base": Cell(mean=50.0, n=1)})])
    out = cell_changes(before, after, "the committed table")
    assert out.splitlines() == ["1 cell(s) differ from the committed table:",
                                "  R (ep 4: 0.52 of final, paper 0.59) -> S / kd: 10.00 (n=1) -> 12.50 (n=1)"]
    assert cell_changes(after, after, "it") == "every cell equals it"
