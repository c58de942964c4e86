"""`reproduce --dry-run --measure` (tfkd_cli/execution/probe.py): a real probe of this machine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfkd_cli.cli.main import cli
from tfkd_cli.config.recipe import Recipe, TeacherCfg, dump, from_dict
from tfkd_cli.execution import probe
from tfkd_cli.execution.cost import Calibration
from tfkd_cli.execution.reproduce import format_plan
from tfkd_cli.storage import rundir
from tfkd_cli.tables.plan import build_plan, unique_runs
from tfkd_cli.tables.spec import load_scale, load_table


def _digits(**over) -> Recipe:
    r = from_dict({"model": "resnet18", "width": 0.0625, "method": "ce", "seed": 0,
                   "data": {"dataset": "digits"}, "train": {"epochs": 2, "batch_size": 16},
                   "runtime": {"device": "cpu", "threads": 1}})
    return replace(r, **over)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A finished digits run made here: its summary.json is a record of this machine."""
    out = tmp_path_factory.mktemp("rec") / "run"
    f = out.parent / "recipe_in.yaml"
    f.write_text(dump(_digits()))
    res = CliRunner().invoke(cli, ["run", str(f), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out / rundir.SUMMARY


def test_records_give_speeds_by_configuration(record):
    s = json.loads(record.read_text())
    speeds = probe.record_speeds([record])
    assert speeds == {probe.config_key(_digits()): [s["images_per_s"]]}
    # a run with a teacher network is not a plain speed; a uniform-teacher control is
    taught = _digits(method="kd", teacher=TeacherCfg(path="runs/t"))
    assert not probe._plain(taught)
    assert probe._plain(_digits(method="kd", teacher=TeacherCfg(uniform=True)))
    # the key ignores method and teacher: a student is timed by its own configuration
    assert probe.config_key(taught) == probe.config_key(_digits())


def test_probe_trains_two_short_epochs_of_the_same_configuration(tmp_path):
    r = _digits(train=replace(_digits().train, epochs=30, keep_epochs=[1, 2, 3]))
    p = probe.probe_recipe(r)
    assert (p.model, p.width, p.train.batch_size, p.method, p.seed) == (r.model, r.width, 16, "ce", 0)
    assert p.train.epochs == 2 and p.train.keep_epochs == [] and p.data.per_class == 39  # ceil(24 * 16 / 10)
    speeds = probe.measure({"k": r}, 1, tmp_path)
    run = tmp_path / "probe0" / "run"
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert summary["status"] == "finished" and summary["num_train"] == 390 and summary["epochs"] == 2
    rows = (run / "timings.csv").read_text().splitlines()
    assert speeds == {"k": float(rows[2].split(",")[2])}  # the second epoch's images/s


def test_measure_speed_divides_the_records_by_the_probe(record, tmp_path):
    recorded = json.loads(record.read_text())["images_per_s"]
    speed = probe.measure_speed([_digits()], [record], jobs=1, work=tmp_path)
    key = probe.config_key(_digits())
    assert set(speed.factors) == {key}
    probe_speed = recorded / speed.factors[key]
    assert probe_speed > 0
    # a configuration no record trained is not probed, and takes the median factor
    other = _digits(width=0.125)
    assert probe.measure_speed([other], [record], jobs=1, work=tmp_path).factors == {}
    assert speed.factor(other) == speed.factors[key]
    assert probe.Speed({}).factor(other) == 1.0


def test_factors_scale_each_runs_estimate():
    table, scale = load_table("table3"), load_scale("smoke")
    plan = build_plan(table, scale, [0], Path("/nonexistent/runs"))
    plain = format_plan(plan, "cpu", 2, Calibration({}))
    runs = unique_runs(plan)
    keys = {probe.config_key(probe.as_run(p.recipe, 2)) for p in runs}
    doubled = format_plan(plan, "cpu", 2, Calibration({}), probe.Speed({k: 2.0 for k in keys}, 2))

    def times(text):
        return [line.split()[-1] for line in text.splitlines()[2:] if "@s0" in line]

    def secs(t):
        m, s = t.rstrip("s").split("m")
        return int(m) * 60 + int(s)

    a, b = times(plain), times(doubled)
    assert len(a) == len(b) == len(runs) == 13
    assert all(abs(secs(y) - 2 * secs(x)) <= 2 for x, y in zip(a, b))


def test_measure_needs_dry_run():
    res = CliRunner().invoke(cli, ["reproduce", "table3", "--scale", "smoke", "--measure"])
    assert res.exit_code != 0
    assert "--measure times this machine for a --dry-run estimate; add --dry-run" in res.output
    assert "Traceback" not in res.output
