"""`reproduce --dry-run` time estimates: calibrated by committed run records, placed on workers;
and the default number of workers."""

import json

import pytest

from tfkd_cli.config.recipe import Recipe, dump
from tfkd_cli.execution import cost
from tfkd_cli.execution import runner


def _record(folder, recipe: Recipe, run_time_s: float, device: str = "cpu", teacher=None):
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(dump(recipe))
    (folder / "summary.json").write_text(json.dumps({"device": device, "run_time_s": run_time_s,
                                                     "teacher": teacher or {}}))
    return folder / "summary.json"


def test_wall_seconds_places_runs_on_workers_after_their_teachers():
    runs = [("a", 10.0, []), ("b", 4.0, []), ("s", 3.0, ["a"]), ("t", 5.0, [])]
    assert cost.wall_seconds(runs, 1) == 22.0  # one worker: the sum
    # two workers: a on w0 (0-10), b on w1 (0-4); at 4 s s waits for a, so t takes w1 (4-9),
    # then s starts on w1 at 10 (after a), finishing at 13
    assert cost.wall_seconds(runs, 2) == 13.0
    assert cost.wall_seconds([("s", 3.0, ["a"]), ("a", 0.0, [])][::-1], 4) == 3.0  # a finished: 0 s


def test_calibration_matches_model_and_dataset_then_model_then_all(tmp_path):
    mv2 = Recipe(model="mobilenetv2", width=0.25)
    mv2.data.dataset = "digits"
    mv2.train.epochs = 2
    r18 = Recipe(model="resnet18", width=0.125)
    r18.data.dataset = "digits"
    r18.train.epochs = 2
    files = [_record(tmp_path / "a", mv2, 3 * cost.estimate_seconds(mv2)),
             _record(tmp_path / "b", r18, 2 * cost.estimate_seconds(r18)),
             _record(tmp_path / "gpu", r18, 100 * cost.estimate_seconds(r18), device="cuda")]  # not a CPU timing
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")  # skipped, never fatal
    cal = cost.Calibration.from_records(files + [tmp_path / "broken" / "summary.json"])
    assert cal.records == 2
    assert cal.ratio(mv2) == (pytest.approx(3.0), "model, dataset and teacher")
    student = Recipe(model="mobilenetv2", width=0.25, method="kd")
    student.data.dataset, student.teacher.path = "digits", "t"
    assert cal.ratio(student) == (pytest.approx(3.0), "model and dataset")  # no student record
    other = Recipe(model="mobilenetv2", width=0.25)  # cifar100: same model only
    assert cal.ratio(other) == (pytest.approx(3.0), "model")
    assert cal.ratio(Recipe(model="shufflenetv2")) == (pytest.approx(2.5), "all")  # median of 3 and 2
    assert cost.Calibration({}).ratio(mv2) == (1.0, "none")


def test_dry_run_prints_wall_time_as_workers(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tfkd_cli.cli.main import cli

    monkeypatch.chdir(tmp_path)  # no committed records here: uncalibrated
    r = CliRunner().invoke(cli, ["reproduce", "table3", "--scale", "smoke", "--dry-run", "--jobs", "2"])
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert "23 runs; estimated time for pending runs on cpu:" in last and "wall as 2 workers" in last, last
    assert "committed run records" not in last


def test_default_jobs_is_one_run_per_core_on_the_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.default_jobs() == runner.usable_cores() >= 1
    assert runner.default_jobs(["cuda:0", "cuda:1"]) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runner.default_jobs() == 1


def test_only_takes_ids_repeated_or_comma_separated(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tfkd_cli.cli.main import cli

    monkeypatch.chdir(tmp_path)
    base = ["reproduce", "table3", "--scale", "smoke", "--dry-run", "--no-controls"]
    comma = CliRunner().invoke(cli, base + ["--only", "resnet50_pt,mobilenetv2"])
    repeated = CliRunner().invoke(cli, base + ["--only", "resnet50_pt", "--only", "mobilenetv2"])
    assert comma.exit_code == 0 and comma.output == repeated.output, comma.output
    planned = [ln.split()[0] for ln in comma.output.splitlines() if "@s0" in ln]
    assert planned == ["mobilenetv2@s0", "resnet50_pt@s0"]
    bad = CliRunner().invoke(cli, base + ["--only", "resnet50_pt,nope"])
    assert bad.exit_code == 2 and "unknown run id(s) nope" in bad.output
