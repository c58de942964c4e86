"""The local executor's order: runs that share no teacher with a running run start first, so
that the students of one teacher follow each other and the later ones read its cached logits."""

from pathlib import Path

from tfkd_cli.execution import runner
from tfkd_cli.tables.controls import add_controls
from tfkd_cli.tables.plan import build_plan
from tfkd_cli.tables.spec import load_scale, load_table


def _scheduler(tmp_path: Path, pending: list[str], jobs: int = 2) -> runner._Scheduler:
    plan = build_plan(add_controls(load_table("table3")), load_scale("smoke"), [0], tmp_path)
    sched = runner._Scheduler(plan, jobs, [], lambda s: None)
    for p in plan:
        if p.id not in pending:
            sched.state[p.dir] = runner.FINISHED  # every teacher is done
    sched.todo = [p for p in plan if p.id in pending]
    started = []

    def spawn(p, claim):  # the order is what is tested here, not the child process
        started.append(p.id)
        return runner.Job(p, None, tmp_path / "log", 0.0, claim)

    sched._spawn = spawn
    sched.started = started
    return sched


def test_students_of_one_teacher_do_not_start_side_by_side_when_other_work_is_ready(tmp_path):
    sched = _scheduler(tmp_path, ["mv2_from_r18pt", "sv2_from_r18pt", "mv2_from_r50pt"])
    assert sched.start_ready()
    assert sched.started == ["mv2_from_r18pt", "mv2_from_r50pt"]  # not sv2_from_r18pt beside its sibling
    assert [p.id for p in sched.todo] == ["sv2_from_r18pt"]


def test_students_of_one_teacher_still_fill_idle_workers(tmp_path):
    sched = _scheduler(tmp_path, ["mv2_from_r18pt", "sv2_from_r18pt"])
    assert sched.start_ready()
    assert sched.started == ["mv2_from_r18pt", "sv2_from_r18pt"]  # nothing else to run: no idle worker
    assert not sched.todo


def test_runs_without_teachers_keep_the_plan_order(tmp_path):
    sched = _scheduler(tmp_path, ["mobilenetv2", "shufflenetv2", "resnet18"])
    sched.start_ready()
    assert sched.started == ["mobilenetv2", "shufflenetv2"] and [p.id for p in sched.todo] == ["resnet18"]
