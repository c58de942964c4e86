"""Results that last: run records beside every table, tables rebuilt from them alone, tables
built in `--seeds` slices on different machines (here: different folders with no shared runs
folder), a teacher finished elsewhere trained again and checked, and the committed reference
never replaced silently.

Each "machine" is a fresh folder with its own runs folder; what travels between machines is
only the results folder (what a commit carries). Runs are the ResNet50 pt-teacher -> ResNet18
De-KD pair of table3 on digits at 2 epochs, so a slice is two runs of a few seconds.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tfkd_cli.cli.tables import parse_seeds
from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import recipes_dir
from tfkd_cli.tables import records

from conftest import cli_cmd

pytestmark = pytest.mark.slow  # real training processes

TABLE = ["table3", "--scale", "tiny", "--no-controls", "--only", "r18_from_r50pt"]
GENERATED = ("- report generated", "# report generated", '"generated"')
TEACHER, STUDENT = "resnet50_ce_s{}_", "resnet18_kd_s{}_"


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes") / "recipes"
    shutil.copytree(recipes_dir(), root)
    (root / "scales" / "tiny.yaml").write_text(
        "scale: tiny\ndescription: test overlay - digits, 2 epochs, 20 images per class\n"
        "epoch_factor: 0.01\noverrides:\n  width: 0.0625\n  data: {dataset: digits, per_class: 20}\n"
        "  runtime: {threads: 1}\n")
    return root


def tfkd(recipes, machine: Path, *args) -> str:
    """`tfkd` in `machine` (its cwd, its own runs folder); returns the output, asserts exit 0."""
    env = {**os.environ, "TFKD_RECIPES": str(recipes), "PYTHONUNBUFFERED": "1"}
    machine.mkdir(parents=True, exist_ok=True)
    args = [str(a) for a in args]
    if args[0] == "reproduce":
        args += ["--runs-dir", str(machine / "runs")]
    p = subprocess.run(cli_cmd(args), env=env, cwd=machine, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def results(machine: Path) -> Path:
    return machine / "results" / "table3" / "tiny"


def carry(src: Path, dst: Path) -> None:
    """What a commit carries from one machine to another: the results folder, nothing else."""
    shutil.copytree(src / "results", dst / "results", dirs_exist_ok=True)


def table_lines(folder: Path, name: str, skip=GENERATED) -> list[str]:
    return [line for line in (folder / name).read_text().splitlines() if not line.lstrip().startswith(skip)]


def same_but_generated(a: Path, b: Path) -> None:
    for name in ("table.md", "table.csv", "table.json"):
        assert table_lines(a, name) == table_lines(b, name), name
        differ = set((a / name).read_text().splitlines()) ^ set((b / name).read_text().splitlines())
        assert all(line.lstrip().startswith(GENERATED) for line in differ), differ


@pytest.fixture(scope="module")
def one_go(recipes, tmp_path_factory):
    """Seeds 0 and 1 in one go on machine A."""
    a = tmp_path_factory.mktemp("machineA")
    tfkd(recipes, a, "reproduce", *TABLE, "--seeds", "0,1")
    return a


def test_records_are_written_beside_the_table(one_go):
    runs = results(one_go) / "runs"
    names = sorted(p.name for p in runs.iterdir())
    assert len(names) == 4 and sum(n.startswith(TEACHER.format(0)) for n in names) == 1
    for d in runs.iterdir():
        assert sorted(p.name for p in d.iterdir()) == ["metrics.csv", "recipe.yaml", "summary.json"]
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "finished" and s["git_commit"] is not None and s["run_time_s"] > 0
        assert s["hardware"] and s["torch"]
        assert (one_go / "runs" / d.name / "best.pt").is_file()  # checkpoints stay in the runs folder
    assert not list(runs.rglob("*.pt"))


def test_report_only_rebuilds_the_table_from_records_alone(one_go, recipes, tmp_path):
    clean = tmp_path / "clean-clone"
    carry(one_go, clean)
    before = {n: (results(clean) / n).read_text() for n in ("table.md", "table.csv", "table.json")}
    out = tfkd(recipes, clean, "reproduce", *TABLE, "--report-only")
    assert not (clean / "runs").exists() or not any((clean / "runs").iterdir())  # nothing trained
    same_but_generated(results(one_go), results(clean))
    assert "every cell equals the table it replaced" in out
    assert before["table.md"] != (results(clean) / "table.md").read_text()  # it was rewritten (new time)
    assert (results(clean) / "curves.png").stat().st_size > 0  # curves from the records' metrics.csv
    data = json.loads((results(clean) / "table.json").read_text())
    assert data["header"]["seeds"] == [0, 1]  # every recorded seed, without --seeds
    cmp_out = tfkd(recipes, clean, "compare", results(clean), "--format", "md")
    assert "77.23" in cmp_out and "records: 4 runs, every run the table names" in cmp_out


def test_two_slices_on_two_machines_equal_one_go(one_go, recipes, tmp_path):
    b, c = tmp_path / "machineB", tmp_path / "machineC"
    tfkd(recipes, b, "reproduce", *TABLE, "--seeds", "0")
    partial = json.loads((results(b) / "table.json").read_text())
    assert partial["header"]["seeds"] == [0]
    carry(b, c)  # committed, then the second slice on a fresh machine
    out = tfkd(recipes, c, "reproduce", *TABLE, "--seeds", "1")
    assert "2 to run" in out and "again" not in out  # seed 1 needs nothing of seed 0
    # Facts of the machine, not of the results: wall-clock timings, and the teacher checkpoint's
    # file sha256 (torch.save's zip headers carry write times; the weights inside are equal).
    local = GENERATED + ("- compute:", "# compute:", '"compute_time_s"', '"sha256"', "- tfkd-run: ")
    for name in ("table.md", "table.csv", "table.json"):
        assert table_lines(results(c), name, local) == table_lines(results(one_go), name, local)
    assert sorted(p.name for p in (results(c) / "runs").iterdir()) == \
        sorted(p.name for p in (results(one_go) / "runs").iterdir())


def test_a_missing_cell_is_named(one_go, recipes, tmp_path):
    m = tmp_path / "m"
    carry(one_go, m)
    shutil.rmtree(next((results(m) / "runs").glob(STUDENT.format(1) + "*")))
    tfkd(recipes, m, "reproduce", *TABLE, "--report-only")
    md = (results(m) / "table.md").read_text()
    assert "still missing: r18_from_r50pt@s1" in md and "(n=1 of 2)" in md


def test_teacher_finished_elsewhere_is_trained_again_and_checked(recipes, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tfkd(recipes, a, "reproduce", "table3", "--scale", "tiny", "--no-controls", "--only", "resnet50_pt")
    carry(a, b)  # the teacher's record, not its checkpoint
    out = tfkd(recipes, b, "reproduce", *TABLE)
    assert "again  resnet50_pt@s0" in out and "metrics equal to its record" in out
    student = next((results(b) / "runs").glob(STUDENT.format(0) + "*"))
    check = json.loads((student / "summary.json").read_text())["teacher_rerun"]
    (teacher, c), = check.items()
    assert teacher.startswith(TEACHER.format(0)) and c["equal"] and c["max_abs_diff"] == {}
    # A record that the rerun does not reproduce: the student's record says by how much.
    c_ = tmp_path / "c"
    carry(a, c_)
    rec = next((results(c_) / "runs").glob(TEACHER.format(0) + "*")) / "metrics.csv"
    lines = rec.read_text().splitlines()
    head = lines[0].split(",")
    i = head.index("test_top1")
    cols = lines[1].split(",")
    cols[i] = f"{float(cols[i]) + 1.5:.2f}"
    rec.write_text("\n".join([lines[0], ",".join(cols), *lines[2:]]) + "\n")
    out = tfkd(recipes, c_, "reproduce", *TABLE)
    assert "metrics differ from its record" in out and "test_top1 1.5" in out
    student = next((results(c_) / "runs").glob(STUDENT.format(0) + "*"))
    c = next(iter(json.loads((student / "summary.json").read_text())["teacher_rerun"].values()))
    assert not c["equal"] and abs(c["max_abs_diff"]["test_top1"] - 1.5) < 1e-6
    assert rec.read_text().splitlines()[1].split(",")[i] == cols[i]  # the record is never replaced


def test_a_record_from_older_code_is_reported_not_fatal(one_go, recipes, tmp_path):
    m = tmp_path / "m"
    carry(one_go, m)
    student = next((results(m) / "runs").glob(STUDENT.format(0) + "*"))
    s = json.loads((student / "summary.json").read_text())
    del s["last"]["train_top1"], s["diagnostics"]
    (student / "summary.json").write_text(json.dumps(s))
    tfkd(recipes, m, "reproduce", *TABLE, "--report-only")
    md = (results(m) / "table.md").read_text()
    assert "Records that lack a field" in md and "has no last.train_top1" in md


def test_rerun_writes_elsewhere_and_lists_the_cells_that_differ(one_go, recipes, tmp_path):
    m = tmp_path / "m"
    carry(one_go, m)
    committed = {n: (results(m) / n).read_bytes() for n in ("table.md", "table.json")}
    shutil.rmtree(next((results(m) / "runs").glob(STUDENT.format(1) + "*")))  # so a cell differs
    tfkd(recipes, m, "reproduce", *TABLE, "--report-only")
    out = tfkd(recipes, m, "reproduce", *TABLE, "--rerun", "--seeds", "0,1")
    assert "4 to run" in out  # records do not count with --rerun
    rerun = m / "runs" / "rerun" / "table3" / "tiny"
    assert (rerun / "table.md").is_file() and len(list((rerun / "runs").iterdir())) == 4
    assert "cell(s) differ from the committed table" in out and "(n=1) -> " in out
    assert (results(m) / "table.json").read_bytes() != committed["table.json"]  # our report-only above
    assert len(list((results(m) / "runs").iterdir())) == 3  # the committed records are untouched
    again = tfkd(recipes, m, "reproduce", *TABLE, "--rerun", "--seeds", "0,1")  # run dirs count: says so
    assert "0 to run" in again and f"--rerun: 4 run(s) already finished in {m / 'runs'} on this machine" in again
    assert "give --runs-dir an empty folder" in again and "--rerun: " not in out


def test_interrupt_says_what_finished_and_how_to_continue(one_go, recipes, tmp_path, monkeypatch):
    from tfkd_cli.execution import reproduce as api
    from tfkd_cli.tables.plan import build_plan
    from tfkd_cli.tables.spec import load_scale, load_table

    shutil.copytree(one_go / "runs", tmp_path / "runs")
    monkeypatch.setenv("TFKD_RECIPES", str(recipes))
    plan = build_plan(load_table("table3"), load_scale("tiny"), [0, 1], tmp_path / "runs", only={"r18_from_r50pt"})
    half = next(p for p in plan if p.seed == 1 and p.id == "r18_from_r50pt")
    (half.dir / "summary.json").unlink()  # a run caught mid-way: checkpoint, no finished summary
    text = api.interrupted(plan, tmp_path / "results", "tfkd reproduce table3 --seeds 0,1")
    assert text.splitlines()[0].startswith("interrupted: 3 of 4 runs finished")
    assert "1 checkpointed" in text and "checkpointed (they resume): r18_from_r50pt@s1" in text
    assert text.splitlines()[-1] == "continue with: tfkd reproduce table3 --seeds 0,1"


def test_seeds_take_lists_and_ranges():
    assert parse_seeds("2") == [2] and parse_seeds("0,1") == [0, 1] and parse_seeds("0-2,5") == [0, 1, 2, 5]
    for bad in ("a", "-1", "3-1", "0,,1"):
        with pytest.raises(TfkdError, match="--seeds"):
            parse_seeds(bad)


def test_a_damaged_record_is_no_record(tmp_path):
    d = tmp_path / "runs" / "x"
    d.mkdir(parents=True)
    for f in records.FILES:
        (d / f).write_text("{not json")
    assert records.find("x", [tmp_path / "runs"]) is None
    (d / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert records.find("x", [tmp_path / "runs"]) == d


@pytest.mark.parametrize("k, want", [(12, 100 / 12), (None, 1.0)])  # unknown K: CIFAR-100's
def test_chance_is_the_recorded_class_count(tmp_path, k, want):
    """A folder dataset's K is known only from its runs: verdicts read chance from the summary."""
    from tfkd_cli.config.recipe import from_dict
    from tfkd_cli.tables.plan import PlannedRun
    from tfkd_cli.tables.report import _chance

    run = tmp_path / "r"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "finished", **({"num_classes": k} if k else {})}))
    p = PlannedRun("r", 0, from_dict({"data": {"dataset": "folder"}}), run, "key")
    assert _chance([p]) == pytest.approx(want)


def test_records_of_other_tables_count_only_inside_results(tmp_path, monkeypatch):
    """Shared runs: a table in results/ reads its sibling tables' records of the same scale; a
    table written elsewhere (--out) reads only its own, never the committed ones."""
    monkeypatch.chdir(tmp_path)
    for t in ("table3", "tfkd-reg-cifar100"):
        (tmp_path / "results" / t / "smoke" / "runs").mkdir(parents=True)
    (tmp_path / "results" / "table3" / "mini" / "runs").mkdir(parents=True)
    own = records.roots(Path("results/table3/smoke"), "smoke")
    assert own == [(tmp_path / "results" / t / "smoke" / "runs").resolve() for t in ("table3", "tfkd-reg-cifar100")]
    assert records.roots(tmp_path / "elsewhere", "smoke") == [(tmp_path / "elsewhere" / "runs").resolve()]


def test_a_copy_without_git_records_tfkd_commit(tmp_path):
    """A tree sent to a lent GPU machine may arrive without .git (or with stale git metadata):
    its runs record $TFKD_COMMIT, which the sender sets; without it, no commit."""
    import sys

    shutil.copytree(Path(__file__).resolve().parents[1] / "tfkd_cli", tmp_path / "tfkd_cli",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = "from tfkd_cli.storage.rundir import git_commit; print(git_commit())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TFKD_COMMIT": "3022294bf4ea"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "3022294bf4ea", p.stderr
    env.pop("TFKD_COMMIT")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "None", p.stderr
