"""`tfkd reproduce` end to end on digits: the whole table3 plan, resume after SIGKILL, two
processes sharing one table, and `tfkd compare` on the results.

The shipped `smoke` scale takes minutes; these tests add a `tiny` scale overlay (2 epochs,
30 images per class) to a copy of recipes/, so the same plan runs in seconds per run. They run
the table's own 13 runs (`--no-controls`); the control runs and their counts are tested in
test_table_plans.py and test_controls.py.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfkd_cli.cli.main import cli
from tfkd_cli.config.recipe import recipes_dir

from conftest import cli_cmd

pytestmark = pytest.mark.slow  # real training processes: minutes; deselect with -m "not slow"

PAPER_DEKD = ["70.65", "71.82", "71.45", "72.11", "77.23", "71.52", "72.26", "77.28"]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes") / "recipes"
    shutil.copytree(recipes_dir(), root)
    (root / "scales" / "tiny.yaml").write_text(
        "scale: tiny\n"
        "description: test overlay - digits, 2 epochs, 30 images per class, width 0.125\n"
        "epoch_factor: 0.01\n"
        "overrides:\n  width: 0.125\n  data: {dataset: digits, per_class: 30}\n"
        "  runtime: {threads: 1}\n")
    return root


def tfkd(recipes, *args, **kw):
    env = {**os.environ, "TFKD_RECIPES": str(recipes), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cli_cmd(args), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finished_runs(runs_dir: Path) -> dict:
    out = {}
    for s in runs_dir.glob("*/summary.json"):
        d = json.loads(s.read_text())
        if d.get("status") == "finished":
            out[s.parent.name] = s.stat().st_mtime_ns
    return out


@pytest.fixture(scope="module")
def table3(recipes, tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    p = tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--runs-dir", base / "runs",
             "--out", base / "results", cwd=base)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return base, out


def test_reproduce_writes_the_table(table3):
    base, log = table3
    res = base / "results"
    for name in ("table.md", "table.csv", "table.json", "table.png", "curves.png"):
        assert (res / name).stat().st_size > 0
    md = (res / "table.md").read_text()
    for v in PAPER_DEKD:
        assert v in md  # every paper row is there, paper value beside ours
    assert "scale: **tiny**" in md and "NOT comparable" in md and "digits" in md
    data = json.loads((res / "table.json").read_text())
    assert len(data["rows"]) == 8
    h = data["header"]
    assert h["runs_total"] == 13 and h["runs_finished"] == 13 and h["seeds"] == [0]
    assert h["torch"] and h["hardware"] and "git_commit" in h and h["compute_time_s"] > 0
    assert h["compute_train_only_runs"] == 0  # every run recorded its whole run time
    for row in data["rows"]:
        cells = row["cells"]
        assert cells["dekd"]["n"] == 1 and cells["student"]["n"] == 1 and cells["teacher"]["n"] == 1
        claim = row["claims"][0]  # issue #17: a claim whose runs did not train is inconclusive, with why
        assert claim["verdict"] in ("yes", "no", "inconclusive")
        assert claim["verdict"] != "inconclusive" or claim["reason"]
        assert row["claims"][0]["paper_verdict"] == "yes"
    csv = (res / "table.csv").read_text()
    assert csv.startswith("# table3") and "best_epoch_top1" in csv


def test_shared_teacher_trained_once(table3):
    base, _ = table3
    dirs = [p.name for p in (base / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 13
    assert sum(d.startswith("resnet18_ce_") for d in dirs) == 1  # teacher of 2 rows, baseline of 2


def test_rerun_skips_finished_runs(table3, recipes):
    base, _ = table3
    before = finished_runs(base / "runs")
    p = tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--runs-dir", base / "runs",
             "--out", base / "results2", cwd=base)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "13 already done, 0 to run" in out
    assert finished_runs(base / "runs") == before


def test_results_name_runs_relative_to_the_runs_folder(table3, recipes, tmp_path):
    """No machine path in a committed table: runs and teacher files are relative to --runs-dir,
    and --report-only from another folder, given --runs-dir, finds the same runs."""
    base, _ = table3
    data = json.loads((base / "results" / "table.json").read_text())
    cells = [c for r in data["rows"] for c in r["cells"].values() if c.get("run")]
    runs = [d for c in cells for d in c["runs"]]
    files = [t["file"] for c in cells for t in c["teachers"]]
    assert runs and files
    assert not [p for p in runs + files if Path(p).is_absolute()]
    assert all((base / "runs" / d / "summary.json").is_file() for d in runs)
    assert all((base / "runs" / f).is_file() for f in files)
    assert str(base) not in (base / "results" / "table.md").read_text()
    p = tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--report-only", "--runs-dir", base / "runs",
             "--out", tmp_path / "again", cwd=tmp_path)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    again = json.loads((tmp_path / "again" / "table.json").read_text())
    assert [c["runs"] for r in again["rows"] for c in r["cells"].values() if c.get("run")] == [c["runs"] for c in cells]
    assert again["rows"] == data["rows"]


def test_dry_run_lists_plan(recipes, tmp_path):
    p = tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--dry-run", "--runs-dir", tmp_path, cwd=tmp_path)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    for rid in ("resnet18@s0", "resnet50_pt@s0", "mv2_from_r18pt@s0", "r18_from_rx29pt@s0"):
        assert rid in out
    assert "resnet18@ep1" in out and "13 runs; estimated time" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_killed_reproduce_resumes_missing_runs_only(recipes, tmp_path):
    runs = tmp_path / "runs"
    p = tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--jobs", "1", "--runs-dir", runs, "--out", tmp_path / "res",
             cwd=tmp_path)
    deadline = time.time() + 300
    while len(finished_runs(runs)) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    done = finished_runs(runs)
    assert 3 <= len(done) < 13
    p = tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--jobs", "1", "--runs-dir", runs, "--out", tmp_path / "res",
             cwd=tmp_path)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert f"{len(done)} already done, {13 - len(done)} to run" in out
    after = finished_runs(runs)
    assert len(after) == 13
    assert all(after[k] == v for k, v in done.items())  # finished runs were not touched
    for t in runs.glob("*/timings.csv"):  # and no run trained an epoch twice
        epochs = [line.split(",")[0] for line in t.read_text().splitlines()[1:]]
        assert len(epochs) == len(set(epochs)), t


def test_two_processes_split_the_table(recipes, tmp_path):
    """Two `reproduce` processes, two workers each, on one runs folder: every run is started by
    exactly one of them (a run is claimed before its child process starts, not only locked once
    the child has loaded)."""
    runs = tmp_path / "runs"
    procs = [tfkd(recipes, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--jobs", "2", "--runs-dir", runs,
                  "--out", tmp_path / f"res{i}", cwd=tmp_path) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    started = [sum(line.startswith("start ") for line in o.splitlines()) for o in outs]
    assert sum(started) == 13 and min(started) >= 1, outs  # each run trained by exactly one process
    assert len(finished_runs(runs)) == 13


# -- compare -------------------------------------------------------------------------

def test_compare_against_paper_and_between_results(table3):
    base, _ = table3
    r = CliRunner().invoke(cli, ["compare", str(base / "results"), "--format", "md"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "70.65" in r.stdout and "NOT comparable" in r.stdout
    r = CliRunner().invoke(cli, ["compare", str(base / "results"), str(base / "results"), "--format", "json"])
    assert r.exit_code == 0
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 24 and all(row["B - A"] == "+0.00" for row in rows)


def test_compare_fail_on_claims(tmp_path):
    """A fixture results folder with one failed claim: exit 1 with --fail-on-claims, else 0."""
    row = lambda label, verdict: {  # noqa: E731
        "label": label, "note": None,
        "cells": {"base": {"name": "M", "paper": 70.0, "mean": 60.0, "std": 0.1, "n": 2, "run": "b"},
                  "kd": {"paper": 72.0, "mean": 61.0 if verdict == "yes" else 59.0, "std": 0.2, "n": 2,
                         "run": "k", "delta_paper": -11.0}},
        "claims": [{"text": "KD improved", "kind": "improves", "column": "kd", "baseline": "base",
                    "gain": 1.0 if verdict == "yes" else -1.0, "paper_gain": 2.0,
                    "verdict": verdict, "paper_verdict": "yes"}]}
    fixture = {"table": "t", "title": "fixture", "rows": [row("a", "yes"), row("b", "no")],
               "header": {"scale": "mini", "dataset": "digits", "seeds": [0, 1], "comparable_with_paper": False}}
    d = tmp_path / "res"
    d.mkdir()
    (d / "table.json").write_text(json.dumps(fixture))
    r = CliRunner().invoke(cli, ["compare", str(d)])
    assert r.exit_code == 0 and "KD improved" in r.stdout
    r = CliRunner().invoke(cli, ["compare", str(d), "--fail-on-claims", "--format", "csv"])
    assert r.exit_code == 1 and "1 claim(s) do not hold" in r.stderr


def test_compare_shows_every_claim_of_a_cell_and_its_noise(tmp_path):
    """Tf-KD_reg cells carry two claims (improves the baseline, matches KD): compare shows both,
    with the noise qualifier, and --fail-on-claims counts each failed one."""
    cl = lambda text, verdict, noise: {"text": text, "kind": "improves", "column": "reg",  # noqa: E731
                                       "baseline": "base", "gain": 0.1, "paper_gain": 1.0,
                                       "verdict": verdict, "paper_verdict": "yes", "noise": noise}
    fixture = {"table": "t", "title": "fixture", "rows": [{
        "label": "R", "note": None,
        "cells": {"base": {"name": "M", "paper": 70.0, "mean": 60.0, "std": 0.5, "n": 2},
                  "reg": {"paper": 71.0, "mean": 60.1, "std": 0.5, "n": 2, "delta_paper": -10.9}},
        "claims": [cl("reg improved", "yes", "within noise"), cl("reg matches KD", "no", "clear")]}],
        "header": {"scale": "mini", "dataset": "digits", "seeds": [0, 1], "comparable_with_paper": False}}
    d = tmp_path / "res"
    d.mkdir()
    (d / "table.json").write_text(json.dumps(fixture))
    r = CliRunner().invoke(cli, ["compare", str(d), "--format", "csv"])
    assert r.exit_code == 0
    assert "reg improved; reg matches KD" in r.stdout and "yes (within noise); no" in r.stdout
    r = CliRunner().invoke(cli, ["compare", str(d), "--fail-on-claims"])
    assert r.exit_code == 1 and "1 claim(s) do not hold" in r.stderr


def test_reproduce_list_and_unknown_table():
    r = CliRunner().invoke(cli, ["reproduce", "--list"])
    assert r.exit_code == 0
    for tid in ("table1", "table3", "tfkd-self-cifar100", "tfkd-reg-cifar100", "tfkd-imagenet"):
        assert tid in r.stdout
    r = CliRunner().invoke(cli, ["reproduce", "table9"])
    assert r.exit_code == 2 and "unknown table 'table9'" in r.stderr


def test_plan_with_released_teachers(tmp_path):
    """--teachers DIR: the released runs are not trained; students point at the release files
    at the paper's epochs (base_resnet50/50.pth.tar = after 51 epochs), in their own run dirs."""
    from tfkd_cli.storage.loading import resolve_file
    from tfkd_cli.tables.plan import build_plan
    from tfkd_cli.tables.spec import load_scale, load_table

    rel = tmp_path / "pretrained_teacher_models"
    for name, files in {"base_resnet18": ["best.pth.tar", "0.pth.tar"], "base_resnet50": ["50.pth.tar"],
                        "base_resnext29": ["50.pth.tar"]}.items():
        (rel / name).mkdir(parents=True)
        for f in files:
            (rel / name / f).write_bytes(b"x")
    table = load_table("table3")
    own = {p.id: p for p in build_plan(table, load_scale("paper"), [0], tmp_path / "runs")}
    plan = {p.id: p for p in build_plan(table, load_scale("paper"), [0], tmp_path / "runs", teachers=rel)}
    assert {i for i, p in plan.items() if p.external} == {"resnet18", "resnet50_pt", "resnext29_pt"}
    t = plan["mv2_from_r50pt"].recipe.teacher
    assert (t.path, t.model, t.epoch, t.width) == (str(rel / "base_resnet50"), "resnet50", 51, 1.0)
    assert resolve_file(rel / "base_resnet50", t.epoch) == rel / "base_resnet50" / "50.pth.tar"
    t = plan["mv2_from_r18pt"].recipe.teacher
    assert resolve_file(Path(t.path), t.epoch) == rel / "base_resnet18" / "0.pth.tar"
    # a student taught by a released teacher never shares a run directory with one taught by ours
    assert plan["mv2_from_r50pt"].dir != own["mv2_from_r50pt"].dir
    assert plan["mobilenetv2"].dir == own["mobilenetv2"].dir
    # at a reduced scale the release epoch stays the paper's
    mini = {p.id: p for p in build_plan(table, load_scale("mini"), [0], tmp_path / "runs", teachers=rel)}
    assert mini["sv2_from_rx29pt"].recipe.teacher.epoch == 51
