"""`tfkd sweep`: the grid, one-line errors, the choice on validation only (never the test set),
finished points skipped, and a real tiny sweep on digits (resumed with --jobs 2)."""

import json

import pytest
from click.testing import CliRunner

from tfkd_cli.storage import rundir
from tfkd_cli.cli.main import cli
from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import resolve_run
from tfkd_cli.sweep.run import build_points, parse_grid
from tfkd_cli.sweep.report import choose

BASE = ["--dataset", "digits", "--model", "resnet18", "--width", "0.125", "--epochs", "1", "--method", "tfkd_reg",
        "--set", "runtime.threads=1", "--device", "cpu", "--quiet"]


def sweep(tmp_path, *args):
    return CliRunner().invoke(cli, ["sweep", *BASE, "--runs-dir", str(tmp_path / "runs"),
                                    "--out", str(tmp_path / "sweep"), *map(str, args)])


def one_error_line(r):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfkd: error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def test_grid_parsing():
    axes = parse_grid(["loss.alpha=0.1,0.9", "optim.milestones=[1,2],[3]", "loss.semantics=official,paper"])
    assert [a.key for a in axes] == ["loss.alpha", "optim.milestones", "loss.semantics"]
    assert axes[0].values == [0.1, 0.9] and axes[1].values == [[1, 2], [3]]
    assert parse_grid(["optim.lr=1e-2,0.1"])[0].values == [0.01, 0.1]
    for bad, what in [(["loss.alpha=0.1", "loss.alpha=0.2"], "twice"), (["loss.alpha=0.1,0.1"], "listed twice"),
                      (["seed=0,1"], "--seeds"), (["name=a,b"], "label"), (["data.root=a,b"], "data lives"),
                      (["optim.lr.x=1"], "a field, not a section"), (["loss.alpha"], "KEY=V1,V2")]:
        with pytest.raises(TfkdError, match=what):
            parse_grid(bad)


@pytest.mark.parametrize("args, what", [
    (["--grid", "loss.alpa=0.1,0.9"], "'alpa' is not a recipe field of loss; allowed: alpha, temperature"),
    (["--grid", "lr=0.1"], "'lr' is not a recipe field of the recipe; allowed: model"),
    ([], "the grid is empty"),
    (["--grid", "loss.alpha="], "empty value"),
    (["--grid", "loss.alpha=0.1,,0.9"], "empty value"),
    (["--grid", "loss.alpha=high"], "value 'high' is not allowed (loss.alpha: expected float or null, got 'high')"),
    (["--grid", "train.epochs=1.5"], "value 1.5 is not allowed (train.epochs: expected int"),
    (["--grid", "loss.alpha=2"], "loss.alpha must be in [0, 1]"),
    (["--grid", "loss.temperature=4,4.0"], "two values are the same loss.temperature"),
    (["--grid", "loss.alpha=0.1", "--val-per-class", "150"], "data.val_per_class=150 is not smaller than a class's"),
    (["--grid", "data.val_per_class=5,150"], "data.val_per_class=150 is not smaller than a class's"),
    (["--grid", "loss.alpha=0.1"], "set --val-per-class N"),
    (["--grid", "loss.alpha=0.1", "--val-per-class", "5", "--overwrite"], "never replaces runs"),
    (["--grid", "loss.alpha=0.1", "--val-per-class", "5", "--name", "a/b"], "--name 'a/b'"),
])
def test_bad_input_is_one_line(tmp_path, args, what):
    line = one_error_line(sweep(tmp_path, *args))
    assert what in line, line
    assert not (tmp_path / "sweep").exists() and not any((tmp_path / "runs").glob("*/summary.json"))


def point(val, test, nll=1.0, status="finished"):
    return {"status": status, "val_mean": val, "val_nll_mean": nll, "test_mean": test}


def test_choice_reads_validation_only():
    pts = [point(60.0, 90.0), point(70.0, 50.0), point(65.0, 99.0)]
    assert choose(pts) == 1  # the best test point (2) and the worst-test point (1): val decides
    for p in pts:  # any test numbers: the same choice
        p["test_mean"] = -p["test_mean"]
    assert choose(pts) == 1
    assert choose([point(70.0, 1.0, nll=0.9), point(70.0, 99.0, nll=0.5)]) == 1  # tie: lower val NLL
    assert choose([point(70.0, 1.0), point(70.0, 99.0)]) == 0  # full tie: grid order
    assert choose([point(60.0, 1.0), point(99.0, 1.0, status="pending")]) == 0  # incomplete points cannot win
    assert choose([point(None, None, None, "pending")]) is None


def test_fixture_sweep_chooses_best_val_not_best_test(tmp_path):
    """Finished runs whose best-test point differs from their best-val point: the sweep trains
    nothing (finished points are skipped) and chooses the best-val one."""
    grid = ["loss.alpha=0.1,0.9", "loss.temperature=4,20"]
    base = resolve_run(None, ["runtime.threads=1"], {"data": {"dataset": "digits", "val_per_class": 5},
                                                      "model": "resnet18", "width": 0.125, "method": "tfkd_reg",
                                                      "train": {"epochs": 1}, "runtime": {"device": "cpu"}})
    points = build_points(base, parse_grid(grid), [0, 1], tmp_path / "runs")
    # (val, test) per point, two seeds each: best val is alpha=0.9,T=4; best test is alpha=0.1,T=20
    numbers = {(0.1, 4.0): [(50, 60), (52, 62)], (0.1, 20.0): [(55, 95), (57, 97)],
               (0.9, 4.0): [(80, 40), (82, 42)], (0.9, 20.0): [(70, 70), (60, 70)]}
    for p in points:
        for r, (val, test) in zip(p.runs, numbers[(p.params["loss.alpha"], p.params["loss.temperature"])]):
            r.dir.mkdir(parents=True)
            rundir.write_summary(r.dir, {"status": "finished", "recipe_hash": r.recipe.hash(), "run_time_s": 2.0,
                                         "best": {"epoch": 1, "top1": 99.0},  # the official number: never read
                                         "selected": {"epoch": 1, "top1": test, "val_top1": val, "val_nll": 1.0}})
    res = sweep(tmp_path, "--val-per-class", "5", "--seeds", "2", *sum((["--grid", g] for g in grid), []))
    assert res.exit_code == 0, res.output
    assert "8 runs: 8 already done, 0 to run" in res.output
    assert not any((tmp_path / "runs").glob("*/metrics.csv"))  # nothing was trained
    out = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert out["chosen"] == {"loss.alpha": 0.9, "loss.temperature": 4.0}
    by = {(p["params"]["loss.alpha"], p["params"]["loss.temperature"]): p for p in out["points"]}
    assert by[(0.9, 4.0)]["val_mean"] == 81.0 and by[(0.9, 4.0)]["test_mean"] == 41.0
    assert by[(0.9, 20.0)]["val_std"] == pytest.approx(7.0710678, rel=1e-6)
    assert max(out["points"], key=lambda p: p["test_mean"])["params"] == {"loss.alpha": 0.1, "loss.temperature": 20.0}
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "chosen: **alpha=0.9, temperature=4**" in md and "81.00±1.41" in md and "41.00±1.41" in md
    line = next(l for l in md.splitlines() if "**chosen**" in l)
    assert "0.9" in line and "81.00" in line
    csv = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert csv[-4].startswith("0.1,4.0,51.0") and sum(l.endswith(",1") for l in csv) == 1
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_real_tiny_sweep_then_extended_with_jobs(tmp_path):
    args = ["--per-class", "20", "--val-per-class", "5"]
    r = sweep(tmp_path, *args, "--grid", "loss.alpha=0.1,0.9")
    assert r.exit_code == 0, r.output
    assert "2 runs: 0 already done, 2 to run" in r.output
    out = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [p["status"] for p in out["points"]] == ["finished", "finished"]
    for p in out["points"]:  # every number is the run's own val-selected epoch
        s = rundir.read_summary(p["runs"][0])
        assert p["val_mean"] == s["selected"]["val_top1"] and p["test_mean"] == s["selected"]["top1"]
        assert s["val_per_class"] == 5 and s["num_train"] == 200
    best = max(range(2), key=lambda i: (out["points"][i]["val_mean"], -out["points"][i]["val_nll_mean"], -i))
    assert out["points"][best]["chosen"] and out["chosen"] == out["points"][best]["params"]
    stamps = {p: (p / "summary.json").stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()
              if p.is_dir() and not p.name.startswith(".")}  # .logs: the child processes' logs
    # a third value, two jobs: the two finished points are reused; one run left for two workers
    # runs in this process with every thread (the runner never leaves a worker without a run)
    r = sweep(tmp_path, *args, "--grid", "loss.alpha=0.1,0.9,0.5", "--jobs", "2")
    assert r.exit_code == 0, r.output
    assert "3 runs: 2 already done, 1 to run (jobs=1)" in r.output
    assert all((p / "summary.json").stat().st_mtime_ns == t for p, t in stamps.items())
    out = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [p["params"]["loss.alpha"] for p in out["points"]] == [0.1, 0.9, 0.5]
    assert all(p["status"] == "finished" for p in out["points"]) and sum(p["chosen"] for p in out["points"]) == 1
