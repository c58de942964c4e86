"""`tfkd reproduce`: load a table and a scale, plan, run, and write the results table."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.tables import records
from tfkd_cli.tables import render
from tfkd_cli.tables import report
from tfkd_cli.tables.controls import add_controls
from tfkd_cli.config.recipe import Recipe
from tfkd_cli.execution.cost import Calibration, committed_records, estimate_seconds, wall_seconds
from tfkd_cli.execution.probe import Speed, measure_speed
from tfkd_cli.tables.plan import PlannedRun, build_plan, unique_runs
from tfkd_cli.tables.results import Results
from tfkd_cli.execution.executors import EXECUTORS, LocalOptions
from tfkd_cli.execution.runner import FINISHED, default_jobs, status_of, weights_needed
from tfkd_cli.tables.spec import index, load_scale, load_table


def list_tables() -> str:
    from tabulate import tabulate

    rows = []
    for tid, entry in index().items():
        t = load_table(tid)
        cells = [c for r in t.rows for c in r.cells.values() if c.run or c.paper is not None]
        with_paper = sum(1 for c in cells if c.paper is not None)
        rows.append([tid, ", ".join(entry.get("aliases") or []), t.status,
                     f"{with_paper}/{len(cells)}", len(t.rows), len(t.runs), t.title])
    return tabulate(rows, headers=["table", "aliases", "paper numbers", "cells with paper value", "rows", "runs", "title"])


def _status(p: PlannedRun, again: set) -> str:
    """A planned run's status in the plan: `again (weights)` for a recorded teacher whose weights a student needs."""
    return "again (weights)" if p.dir in again else status_of(p) or "pending"


def pending_recipes(plan: list[PlannedRun]) -> list[Recipe]:
    """The recipes of the runs a plan would train (pending, or again for their weights)."""
    again = {q.dir for q in weights_needed(plan)}
    return [p.recipe for p in unique_runs(plan)
            if not p.external and _status(p, again) in ("pending", "again (weights)")]


def format_plan(plan: list[PlannedRun], device: str = "cpu", jobs: int = 1,
                calibration: Optional[Calibration] = None, speed: Optional[Speed] = None) -> str:
    from tabulate import tabulate

    by_key = {(p.id, p.seed): p for p in plan}
    again = {q.dir for q in weights_needed(plan)}
    cal = calibration if calibration is not None and not device.startswith("cuda") else Calibration({})
    lines, work, used = [], [], set()
    for p in unique_runs(plan):
        st = _status(p, again)
        if st == "finished" and p.record is not None and not rundir.is_finished(p.dir):
            st = "finished (record)"
        r = p.recipe
        teacher = by_key[p.deps[0]].recipe if p.deps else None
        factor, basis = cal.ratio(r)
        used.add(basis)
        secs = 0.0 if p.external else estimate_seconds(r, device, teacher) * factor
        if speed is not None:
            secs *= speed.factor(r)
        todo = st in ("pending", "again (weights)")
        work.append((p.name, secs if todo else 0.0, [by_key[d].name for d in p.deps]))
        at = f"@ep{r.teacher.epoch}" if r.teacher.epoch else f"@ratio={r.teacher.ratio:g}" if r.teacher.ratio else ""
        dep = ", ".join(f"{by_key[d].id}{at}" for d in p.deps)
        what = f"{r.model} x{r.width:g} {r.method}"
        what += _loss_text(r)
        lines.append([p.name, what, r.train.epochs, r.train.batch_size, f"{r.lr:g}", dep or "-",
                      "release " + str(p.release) if p.external else st, _hms(secs)])
    head = tabulate(lines, headers=["run", "what", "epochs", "batch", "lr", "needs", "status", "est. time"])
    total = sum(w[1] for w in work)
    how = "per-image times measured per model (tfkd_cli/execution/cost.py)"
    if cal.records and not device.startswith("cuda"):
        how += (f", scaled by the measured times of {cal.records} committed run records "
                f"(matched by {', '.join(sorted(used))})")
        how += f"; {speed.describe()}" if speed is not None else \
            "; machines differ up to 3x (--measure times this one)"
    return (f"{head}\n\n{len(lines)} runs; estimated time for pending runs on {device}: "
            f"{_hms(wall_seconds(work, jobs))} wall as {jobs} worker{'s' if jobs > 1 else ''} "
            f"({_hms(total)} of run time; {how})")


def _estimate(plan: list[PlannedRun], device: str, jobs: int, measure: bool, log: Callable[[str], None]) -> str:
    """The dry-run's plan and estimate; with `measure` (CPU), scaled by this machine's probed speed."""
    speed, summaries = None, committed_records()
    if measure and not device.startswith("cuda"):
        log("--measure: training each configuration here for two short epochs (10-30 s each) ...")
        speed = measure_speed(pending_recipes(plan), summaries, jobs)
    return format_plan(plan, device, jobs, Calibration.from_records(summaries), speed)


_SHORT = {"alpha": "a", "temperature": "T", "multiplier": "m", "label_weight": "w"}  # shown in the plan


def _loss_text(r) -> str:
    """ a=.. T=.. (m=.. unless 1) for the methods that read them."""
    p = r.loss_params()
    return "".join(f" {short}={p[k]:g}" for k, short in _SHORT.items()
                   if k in p and not (k in ("multiplier", "label_weight") and p[k] == 1)) \
        + (" uniform-teacher" if r.teacher.uniform else "")


def _hms(s: float) -> str:
    h, rem = divmod(int(s), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def reproduce(name: str, *, scale: str = "paper", seeds: Optional[list[int]] = None, out: Optional[str] = None,
              runs_dir: str = "runs/reproduce", teachers: Optional[str] = None, only: Optional[set] = None,
              jobs: Optional[int] = None, devices: Optional[list[str]] = None, dry_run: bool = False,
              report_only: bool = False, retry_failed: bool = False, sets: tuple = (), controls: bool = True,
              rerun: bool = False, executor: str = "local", executor_options: Optional[object] = None,
              status: bool = False, command: Optional[str] = None, measure: bool = False,
              log: Callable[[str], None] = print, echo: Callable[[str], None] = print) -> Optional[Results]:
    """Plan, run and report a table. `seeds` are the seeds to run (default [0]); the table reports
    those and every seed already recorded in its results folder (a table built in slices).
    Finished runs' records count as finished unless `rerun`, which trains every run again and
    writes to runs/rerun/<table>/<scale>/ (default), never over the committed table."""
    table = load_table(name)
    if controls:  # the uniform-teacher and ce x (1 - alpha) runs of every cell with a teacher
        table = add_controls(table)
    sc = load_scale(scale)
    overrides = check_sets(sets)
    asked = sorted(set(seeds or [0]))
    tdir = _check_only_and_teachers(table, only, teachers)
    reference = Path("results") / table.table / sc.scale  # the committed table of this scale
    out_dir = Path(out) if out else (Path("runs/rerun") / table.table / sc.scale if rerun else reference)
    where = [] if rerun else records.roots(out_dir, sc.scale)

    def plan_for(seed_list: list[int]) -> list[PlannedRun]:
        plan = build_plan(table, sc, seed_list, Path(runs_dir), teachers=tdir, only=only, sets=overrides)
        for p in plan:
            p.record = None if p.external else records.find(p.dir.name, where)
        return plan

    plan = _check_releases(plan_for(asked), table.table)
    device = (devices or ["cuda" if _cuda() else "cpu"])[0]
    jobs = jobs or default_jobs(devices)
    if dry_run:
        echo(f"{table.table} at scale {sc.scale}, seeds {asked}, runs in {Path(runs_dir).resolve()}"
             + (f", records in {records.folder(out_dir)}" if not rerun else ", records ignored (--rerun)")
             + (f", --set {' '.join(sets)}" if sets else ""))
        echo(_estimate(plan, device, jobs, measure, log))
        return None
    if status:
        from tfkd_cli.execution.slurm import status_table

        echo(status_table(plan, with_queue=executor == "slurm"))
        return None
    if not report_only:
        if rerun:  # records are ignored, run directories are not
            _say_reused(plan, Path(runs_dir), log)
        _run(plan, out_dir, executor, executor_options or LocalOptions(jobs, devices), Path(runs_dir),
             retry_failed, command, log)
    shown = sorted(set(asked) | records.seeds(out_dir))  # slices recorded before, on any machine
    report_plan = plan if shown == asked else plan_for(shown)
    res = report.build_results(table, sc, report_plan, shown, sets=list(sets))
    before = report.read_table(reference if rerun else out_dir)
    files = report.write(res, out_dir, (Path(runs_dir).resolve(), *where, records.folder(out_dir).resolve()))
    echo(render.to_markdown(res))
    log("wrote " + ", ".join(str(f) for f in files))
    if before is not None:
        what = "the committed table " + str(reference / "table.json") if rerun else "the table it replaced"
        log(report.cell_changes(before, res, what))
    return res



def _check_releases(plan: list[PlannedRun], table: str) -> list[PlannedRun]:
    """Every released teacher the plan loads (--teachers) is there; returns the plan."""
    for p in plan:
        if p.external and not p.release.is_dir():
            raise TfkdError(f"--teachers: {p.release} not found (run {p.id} of {table} uses it)")
    return plan


def _say_reused(plan: list[PlannedRun], runs_dir: Path, log: Callable[[str], None]) -> None:
    """--rerun ignores records, not run directories: runs this machine already finished in the
    runs folder count as done (a second --rerun trains nothing). Say so, and how to train afresh."""
    done = [p for p in unique_runs(plan) if status_of(p) == FINISHED]
    if done:
        log(f"--rerun: {len(done)} run(s) already finished in {runs_dir} on this machine count as done "
            "(--rerun ignores the committed records, not run directories); "
            "to train every run again, give --runs-dir an empty folder")


def _check_only_and_teachers(table, only: Optional[set], teachers: Optional[str]) -> Optional[Path]:
    """--only names runs of the table; --teachers is a folder (returned as a Path, or None)."""
    if only:
        unknown = set(only) - set(table.runs)
        if unknown:
            raise TfkdError(f"--only: unknown run id(s) {', '.join(sorted(unknown))}; "
                            f"runs of {table.table}: {', '.join(table.runs)}")
    tdir = Path(teachers) if teachers else None
    if tdir is not None and not tdir.is_dir():
        raise TfkdError(f"--teachers {tdir}: not a folder (expected the unzipped pretrained_teacher_models/ "
                        "with base_<name>/best.pth.tar)")
    return tdir

def _run(plan: list[PlannedRun], out_dir: Path, executor: str, options: object, runs_dir: Path,
         retry_failed: bool, command: Optional[str], log: Callable[[str], None]) -> None:
    """Run the plan; record every run as it finishes; on Ctrl-C say where the table stands."""
    by_key = {(p.id, p.seed): p for p in plan}
    for p in unique_runs(plan):  # finished before (here, or for another table): record it with this one
        if not p.external and (p.record is not None or rundir.is_finished(p.dir)):
            record(p, out_dir, by_key)
    try:
        EXECUTORS[executor](plan, options, runs_dir, retry_failed=retry_failed, log=log,
                            on_finished=lambda p: finished(p, out_dir, by_key, log))
    except KeyboardInterrupt:
        log(interrupted(plan, out_dir, command))
        raise


def record(p: PlannedRun, out_dir: Path, by_key: dict) -> None:
    """Keep a finished run's records with the table. An existing record is the reference and is
    never replaced; a shared run's record is copied from the table that holds it."""
    own = records.folder(out_dir) / p.dir.name
    if p.record is not None:
        if p.record.resolve() != own.resolve():
            p.record = records.save(p.record, out_dir)
    elif rundir.is_finished(p.dir):
        checks = {by_key[k].dir.name: c for k in p.deps if (c := records.read_check(by_key[k].dir))}
        p.record = records.save(p.dir, out_dir, {"teacher_rerun": checks} if checks else None)


def finished(p: PlannedRun, out_dir: Path, by_key: dict, log: Callable[[str], None]) -> None:
    """A run trained by this call finished. One that had a record was trained again for its
    weights: its metrics are checked against the record, which its students' records cite."""
    if p.record is not None:
        check = records.compare_metrics(p.dir, p.record)
        records.write_check(p.dir, check)
        log(f"check  {p.name:28s} trained again: " + ("metrics equal to its record" if check["equal"] else
            "metrics differ from its record, max |diff| " + ", ".join(
                f"{k} {v:.4g}" for k, v in check["max_abs_diff"].items()) + " (its students' records say so)"))
    record(p, out_dir, by_key)


def interrupted(plan: list[PlannedRun], out_dir: Path, command: Optional[str]) -> str:
    """What Ctrl-C leaves: which runs finished (and are recorded), which resume from a checkpoint."""
    runs = [p for p in unique_runs(plan) if not p.external]
    done = [p for p in runs if p.record is not None or rundir.is_finished(p.dir)]
    partial = [p for p in runs if p not in done and (p.dir / rundir.LAST).is_file()]
    lines = [f"interrupted: {len(done)} of {len(runs)} runs finished (records in {records.folder(out_dir)}), "
             f"{len(partial)} checkpointed, {len(runs) - len(done) - len(partial)} not started"]
    if partial:
        lines.append("checkpointed (they resume): " + ", ".join(p.name for p in partial))
    lines.append(f"continue with: {command or 'the same tfkd reproduce command'}")
    return "\n".join(lines)


def check_sets(sets: tuple) -> dict:
    """`--set key=value` items as one override layer; an unknown key or a wrong type is one line."""
    from tfkd_cli.config.recipe import Recipe, merge, parse_set
    from tfkd_cli.config.checks import build

    layer = parse_set(sets)
    try:
        build(Recipe, merge(Recipe().to_dict(), layer), "")
    except TfkdError as e:
        raise TfkdError(f"--set: {e}") from None
    return layer


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
