"""Pt-teachers by strength (issue 22 §1): the epoch whose test top-1 / final test top-1 is nearest
the paper's ratio, picked by one function for training and tables, stable across a resume.

`pick_epoch` on hand-written metrics rows; the student that loads a teacher by ratio (digits,
seconds per run), killed and resumed; bad input as one line; the plans at a strength scale and
at the paper scale; and `tfkd reproduce` at a strength scale overlay end to end (slow).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tfkd_cli.storage import rundir
from tfkd_cli.storage.checkpoint import sha256
from tfkd_cli.cli.main import cli
from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import from_dict, recipes_dir
from tfkd_cli.tables.plan import build_plan
from tfkd_cli.tables.spec import load_scale, load_table
from tfkd_cli.storage.strength import choose, pick_epoch

from conftest import DIGITS, ROOT, cli_cmd, cli_env, fail, run_cli

TABLES_YAML = ROOT / "recipes" / "paper" / "tables.yaml"


def rows(*top1: float) -> list[dict]:
    """metrics.csv rows as csv.DictReader gives them (strings), epochs 1.."""
    return [{"epoch": str(i + 1), "test_top1": str(v)} for i, v in enumerate(top1)]


# -- pick_epoch ---------------------------------------------------------------------------


def test_nearest_fraction_of_the_final_epoch():
    r = rows(10, 20, 30, 40, 50)  # fractions 0.2 0.4 0.6 0.8 1.0
    assert pick_epoch(r, 0.2) == 1
    assert pick_epoch(r, 0.59) == 3
    assert pick_epoch(r, 0.64) == 3
    assert pick_epoch(r, 0.71) == 4
    assert pick_epoch(r, 1.0) == 5


def test_final_is_the_last_epoch_not_the_best():
    r = rows(30, 60, 50)  # final 50: fractions 0.6, 1.2, 1.0
    assert pick_epoch(r, 0.59) == 1
    assert pick_epoch(r, 1.0) == 3


def test_ties_go_to_the_earlier_epoch():
    assert pick_epoch(rows(20, 30, 50), 0.5) == 1  # 0.4 and 0.6 both 0.1 away
    assert pick_epoch(rows(25, 25, 50), 0.5) == 1  # two equal epochs
    assert pick_epoch(rows(10, 50, 50), 1.0) == 2  # the final equalled earlier


def test_rows_in_any_order_give_the_same_epoch():
    r = rows(11.5, 23.25, 31.0, 44.75, 52.0)
    for ratio in (0.2, 0.59, 0.64):
        assert pick_epoch(list(reversed(r)), ratio) == pick_epoch(r, ratio)


def test_a_final_top1_of_zero_is_an_error():
    with pytest.raises(TfkdError, match="final test_top1 is 0: no epoch is a fraction of it"):
        pick_epoch(rows(1.0, 0.0), 0.2)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, True, "0.5", None])
def test_ratio_outside_zero_one_is_an_error(ratio):
    with pytest.raises(TfkdError, match=r"ratio must be a number in \(0, 1\]"):
        pick_epoch(rows(10, 20), ratio)


def test_no_rows_is_an_error():
    with pytest.raises(TfkdError, match="has not trained an epoch"):
        pick_epoch([], 0.5)


# -- the table recipe holds the paper's ratios ---------------------------------------------


def test_table3_ratios_are_the_papers():
    """ratio = pt-teacher accuracy / the same model's full baseline (both from tables.yaml)."""
    papers = {t["id"]: t for t in yaml.safe_load(TABLES_YAML.read_text())["tables"]}
    full = {r["teacher"]: r["teacher_baseline"] for r in papers["re_kd_cifar100"]["rows"]}
    table = load_table("table3")
    for row in table.rows:
        cell = row.cells["teacher"]
        assert cell.ratio == round(cell.paper / full[cell.name], 2), row.label
        for student in (row.cells["dekd"].run,):
            ref = table.runs[student]["teacher"]
            assert (ref["run"], ref["epoch"], ref["ratio"]) == (cell.run, cell.epoch, cell.ratio)
    assert {c.name: c.ratio for r in table.rows for c in [r.cells["teacher"]]} == \
        {"ResNet18": 0.2, "ResNet50": 0.59, "ResNeXt29": 0.64}


def test_paper_scale_keeps_the_epochs_strength_scales_take_the_ratio(tmp_path):
    table = load_table("table3")
    paper = {p.id: p for p in build_plan(table, load_scale("paper"), [0], tmp_path)}
    assert paper["r18_from_r50pt"].recipe.teacher.epoch == 51 and paper["r18_from_r50pt"].recipe.teacher.ratio is None
    assert paper["resnet50_pt"].recipe.train.epochs == 51
    for sc in ("mini", "smoke"):
        assert load_scale(sc).pt_teachers == "strength"
        plan = {p.id: p for p in build_plan(table, load_scale(sc), [0], tmp_path)}
        t = plan["r18_from_rx29pt"].recipe.teacher
        assert (t.epoch, t.ratio) == (None, 0.64)
        rx = plan["resnext29_pt"].recipe.train
        # the whole baseline schedule of its model at this scale (mini gives it its own factor)
        assert rx.epochs == round(200 * load_scale(sc).factor("resnext29_8x64d"))
        assert rx.keep_epochs == list(range(1, rx.epochs + 1))
    assert load_scale("paper").pt_teachers == "epoch"


def _table_with(tmp_path: Path, edit) -> Path:
    root = tmp_path / "recipes"
    shutil.copytree(recipes_dir(), root)
    p = root / "tables" / "table3.yaml"
    p.write_text(edit(p.read_text()))
    return root


@pytest.mark.parametrize("bad,expect", [
    ("ratio: 1.5", "ratio must be a number in (0, 1]"),
    ("ratio: 0", "ratio must be a number in (0, 1]"),
])
def test_a_bad_ratio_in_a_table_is_one_line(tmp_path, monkeypatch, bad, expect):
    root = _table_with(tmp_path, lambda s: s.replace("ratio: 0.59", bad))
    monkeypatch.setenv("TFKD_RECIPES", str(root))
    line = fail(["reproduce", "table3", "--scale", "smoke", "--dry-run", "--runs-dir", tmp_path / "runs"])
    assert expect in line and "table3.yaml" in line


@pytest.mark.parametrize("old,new,expect", [
    ("epochs: 51, keep_epochs: [51]}", "epochs: 51}", "its teacher 'resnet50_pt' is picked by strength "
     "(pt_teachers: strength) but does not keep every epoch"),
    ("{run: resnet50_pt, epoch: 51, ratio: 0.59}", "{run: resnet50_pt, ratio: 0.59}",
     "a teacher reference with a ratio needs the paper's epoch too"),
    ("ratio: 0.64, paper: 51.94}", "ratio: 2, paper: 51.94}", "rows[5].teacher: ratio must be a number in (0, 1]"),
])
def test_bad_teacher_references_are_one_line(tmp_path, monkeypatch, old, new, expect):
    root = _table_with(tmp_path, lambda s: s.replace(old, new))
    monkeypatch.setenv("TFKD_RECIPES", str(root))
    line = fail(["reproduce", "table3", "--scale", "smoke", "--dry-run", "--runs-dir", tmp_path / "runs"])
    assert expect in line, line


def test_a_bad_pt_teachers_value_is_one_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("epoch_factor: 0.1\npt_teachers: strenght\n")
    line = fail(["reproduce", "table3", "--scale", f, "--dry-run", "--runs-dir", tmp_path / "runs"])
    assert "pt_teachers" in line, line


def test_a_strength_scale_needs_the_ratio(tmp_path, monkeypatch):
    root = _table_with(tmp_path, lambda s: s.replace(", ratio: 0.59}", "}"))
    monkeypatch.setenv("TFKD_RECIPES", str(root))
    line = fail(["reproduce", "table3", "--scale", "smoke", "--dry-run", "--runs-dir", tmp_path / "runs"])
    assert "at a scale with pt_teachers: strength its teacher reference needs the paper's ratio" in line
    # the paper scale does not read it
    r = CliRunner().invoke(cli, ["reproduce", "table3", "--scale", "paper", "--dry-run", "--runs-dir",
                                 str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output


# -- the recipe field -----------------------------------------------------------------------


def test_ratio_enters_the_identity_only_when_set():
    base = {"method": "kd", "teacher": {"path": "t"}}
    a = from_dict(base, "t")
    b = from_dict({**base, "teacher": {"path": "t", "ratio": 0.59}}, "t")
    assert "ratio" not in a.identity()["teacher"] and b.identity()["teacher"]["ratio"] == 0.59
    assert a.hash() != b.hash() and b.legacy_hash() is None


@pytest.mark.parametrize("teacher,expect", [
    ({"ratio": 1.5}, "teacher.ratio must be in (0, 1]"),
    ({"ratio": 0.0}, "teacher.ratio must be in (0, 1]"),
    ({"ratio": 0.5, "epoch": 3}, "teacher.epoch must be null with teacher.ratio"),
])
def test_bad_ratio_in_a_recipe(teacher, expect):
    with pytest.raises(TfkdError) as e:
        from_dict({"method": "kd", "teacher": {"path": "t", **teacher}}, "src")
    assert expect in str(e.value) and "\n" not in str(e.value)


# -- a student that loads its teacher by ratio ----------------------------------------------

STUDENT = ["distill", "--student", "mobilenetv2", *DIGITS, "--epochs", "2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A finished 4-epoch resnet18 on digits that keeps every epoch."""
    out = tmp_path_factory.mktemp("strength") / "teacher"
    r = CliRunner().invoke(cli, ["train-teacher", *DIGITS, "--epochs", "4", "--set", "train.keep_epochs=[1,2,3,4]",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _strength_of(run: Path) -> dict:
    return json.loads((run / rundir.SUMMARY).read_text())["teacher"]


@pytest.mark.slow  # trains real CLI runs (the quick loop stays under 3 min)
def test_student_loads_the_nearest_epoch_and_records_it(teacher, tmp_path):
    r = CliRunner().invoke(cli, [*STUDENT, "--teacher", str(teacher), "--set", "teacher.ratio=0.59",
                                 "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    t = _strength_of(tmp_path / "s")
    top1 = {int(x["epoch"]): float(x["test_top1"]) for x in rundir.read_metrics(teacher)}
    epoch = pick_epoch(rundir.read_metrics(teacher), 0.59)
    s = t["strength"]
    assert s["epoch"] == epoch == t["epoch"] and s["paper_ratio"] == 0.59
    assert s["top1"] == top1[epoch] and s["final_top1"] == top1[4] and s["final_epoch"] == 4
    assert s["ratio"] == round(top1[epoch] / top1[4], 4)
    assert all(abs(s["ratio"] - 0.59) <= abs(v / top1[4] - 0.59) + 1e-4 for v in top1.values())
    f = teacher / rundir.epoch_file(epoch)  # the provenance is the very file loaded
    assert t["file"] == str(f) and t["sha256"] == sha256(f)
    assert s == choose(teacher, 0.59)  # the table reads the same pick


@pytest.mark.slow  # trains real CLI runs (the quick loop stays under 3 min)
def test_a_resumed_student_picks_the_same_epoch(teacher, tmp_path):
    args = [*STUDENT, "--teacher", teacher, "--set", "teacher.ratio=0.2"]
    whole = run_cli([*args, "--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr
    killed = run_cli([*args, "--out", tmp_path / "cut"], env=cli_env(TFKD_FAULT="metrics:1"))
    assert killed.returncode != 0 and not rundir.is_finished(tmp_path / "cut")
    resumed = run_cli([*args, "--out", tmp_path / "cut", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = _strength_of(tmp_path / "whole"), _strength_of(tmp_path / "cut")
    assert a["strength"] == b["strength"] and a["sha256"] == b["sha256"]
    assert (tmp_path / "whole" / rundir.METRICS).read_text() == (tmp_path / "cut" / rundir.METRICS).read_text()


def test_a_teacher_whose_final_top1_is_zero_is_one_line(teacher, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(teacher, t)
    m = rundir.read_metrics(t)
    rundir.write_metrics(t, [{**r, "test_top1": 0.0} if r is m[-1] else r for r in m])
    line = fail([*STUDENT, "--teacher", t, "--set", "teacher.ratio=0.5", "--out", tmp_path / "s"])
    assert line == f"tfkd: error: teacher {t}: the teacher run's final test_top1 is 0: no epoch is a fraction " \
                   "of it (the run did not train)"


def test_an_unfinished_teacher_is_one_line(teacher, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(teacher, t)
    s = json.loads((t / rundir.SUMMARY).read_text())
    (t / rundir.SUMMARY).write_text(json.dumps({**s, "status": "running"}))
    line = fail([*STUDENT, "--teacher", t, "--set", "teacher.ratio=0.5", "--out", tmp_path / "s"])
    assert line == (f"tfkd: error: the teacher run {t} has not finished (status running); a teacher picked by "
                    "ratio needs its final test top-1: finish that run first")
    assert not (tmp_path / "s").exists()


def test_a_teacher_file_with_a_ratio_is_one_line(teacher, tmp_path):
    f = teacher / rundir.BEST
    line = fail([*STUDENT, "--teacher", f, "--set", "teacher.ratio=0.5", "--out", tmp_path / "s"])
    assert line.startswith("tfkd: error: teacher.ratio needs a tfkd run directory as the teacher")


def test_a_ratio_out_of_range_is_one_line(teacher, tmp_path):
    line = fail([*STUDENT, "--teacher", teacher, "--set", "teacher.ratio=1.5", "--out", tmp_path / "s"])
    assert line.endswith("teacher.ratio must be in (0, 1] (a fraction of the teacher's final test top-1) "
                         "or null (got 1.5)")


# -- reproduce at a strength scale, end to end ------------------------------------------------


@pytest.mark.slow
def test_reproduce_at_a_strength_scale_picks_the_nearest_epoch(tmp_path):
    root = tmp_path / "recipes"
    shutil.copytree(recipes_dir(), root)
    (root / "scales" / "tinyst.yaml").write_text(
        "scale: tinyst\ndescription: test overlay - digits, 4 epochs, pt-teachers by strength\n"
        "epoch_factor: 0.02\npt_teachers: strength\n"
        "overrides:\n  width: 0.125\n  data: {dataset: digits, per_class: 30}\n  runtime: {threads: 1}\n"
        "per_model:\n  resnet50: {width: 0.0625}\n")
    env = {**cli_env(), "TFKD_RECIPES": str(root)}
    p = subprocess.run(cli_cmd(["reproduce", "table3", "--scale", "tinyst", "--no-controls", "--only", "r18_from_r50pt",
                                "--runs-dir", tmp_path / "runs", "--out", tmp_path / "results"]),
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = tmp_path / "runs"
    (teacher,) = runs.glob("resnet50_ce_*")
    (student,) = runs.glob("resnet18_kd_*")
    assert len(list(teacher.glob("epoch_*.pt"))) == 4  # the whole schedule, every epoch kept
    metrics = rundir.read_metrics(teacher)
    s = _strength_of(student)["strength"]
    assert s["epoch"] == pick_epoch(metrics, 0.59) and s["paper_ratio"] == 0.59
    final = float(metrics[-1]["test_top1"])
    assert min(abs(float(r["test_top1"]) / final - 0.59) for r in metrics) == pytest.approx(abs(s["top1"] / final - 0.59))
