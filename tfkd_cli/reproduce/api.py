"""`tfkd reproduce`: load a table and a scale, plan, run, and write the results table."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from tfkd_cli.errors import TfkdError
from tfkd_cli.reproduce import report
from tfkd_cli.reproduce.controls import add_controls
from tfkd_cli.reproduce.cost import estimate_seconds
from tfkd_cli.reproduce.plan import PlannedRun, build_plan, unique_runs
from tfkd_cli.reproduce.executors import EXECUTORS, LocalOptions
from tfkd_cli.reproduce.runner import status_of
from tfkd_cli.reproduce.spec import index, load_scale, load_table


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


def format_plan(plan: list[PlannedRun], device: str = "cpu") -> str:
    from tabulate import tabulate

    by_key = {(p.id, p.seed): p for p in plan}
    lines, total = [], 0.0
    for p in unique_runs(plan):
        st = status_of(p) or "pending"
        r = p.recipe
        teacher = by_key[p.deps[0]].recipe if p.deps else None
        secs = 0.0 if p.external else estimate_seconds(r, device, teacher)
        if st == "pending":
            total += secs
        dep = ", ".join(f"{by_key[d].id}" + (f"@ep{r.teacher.epoch}" if r.teacher.epoch else "") for d in p.deps)
        what = f"{r.model} x{r.width:g} {r.method}"
        what += _loss_text(r)
        lines.append([p.name, what, r.train.epochs, r.train.batch_size, f"{r.lr:g}", dep or "-",
                      "release " + str(p.release) if p.external else st, _hms(secs)])
    head = tabulate(lines, headers=["run", "what", "epochs", "batch", "lr", "needs", "status", "est. time"])
    return f"{head}\n\n{len(lines)} runs; estimated time for pending runs on {device}: {_hms(total)} " \
           "(rough: per-image times measured per model, see tfkd_cli/reproduce/cost.py)"


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


def reproduce(name: str, *, scale: str = "paper", seeds: int = 1, out: Optional[str] = None,
              runs_dir: str = "runs/reproduce", teachers: Optional[str] = None, only: Optional[set] = None,
              jobs: int = 1, devices: Optional[list[str]] = None, dry_run: bool = False,
              report_only: bool = False, retry_failed: bool = False, sets: tuple = (), controls: bool = True,
              executor: str = "local", executor_options: Optional[object] = None, status: bool = False,
              log: Callable[[str], None] = print, echo: Callable[[str], None] = print) -> Optional[dict]:
    table = load_table(name)
    if controls:  # the uniform-teacher and ce x (1 - alpha) runs of every cell with a teacher
        table = add_controls(table)
    sc = load_scale(scale)
    overrides = check_sets(sets)
    seed_list = list(range(seeds))
    if only:
        unknown = set(only) - set(table.runs)
        if unknown:
            raise TfkdError(f"--only: unknown run id(s) {', '.join(sorted(unknown))}; "
                            f"runs of {table.table}: {', '.join(table.runs)}")
    tdir = Path(teachers) if teachers else None
    if tdir is not None and not tdir.is_dir():
        raise TfkdError(f"--teachers {tdir}: not a folder (expected the unzipped pretrained_teacher_models/ "
                        "with base_<name>/best.pth.tar)")
    plan = build_plan(table, sc, seed_list, Path(runs_dir), teachers=tdir, only=only, sets=overrides)
    for p in plan:
        if p.external and not p.release.is_dir():
            raise TfkdError(f"--teachers: {p.release} not found (run {p.id} of {table.table} uses it)")
    device = (devices or ["cuda" if _cuda() else "cpu"])[0]
    if dry_run:
        echo(f"{table.table} at scale {sc.scale}, seeds {seed_list}, runs in {Path(runs_dir).resolve()}"
             + (f", --set {' '.join(sets)}" if sets else ""))
        echo(format_plan(plan, device))
        return None
    if status:
        from tfkd_cli.reproduce.slurm import status_table

        echo(status_table(plan, with_queue=executor == "slurm"))
        return None
    if not report_only:
        run = EXECUTORS[executor]
        run(plan, executor_options or LocalOptions(jobs, devices), Path(runs_dir), retry_failed=retry_failed, log=log)
    res = report.build_results(table, sc, plan, seed_list, sets=list(sets))
    out_dir = Path(out) if out else Path("results") / table.table / sc.scale
    files = report.write(res, out_dir, Path(runs_dir))
    echo(report.to_markdown(res))
    log("wrote " + ", ".join(str(f) for f in files))
    return res


def check_sets(sets: tuple) -> dict:
    """`--set key=value` items as one override layer; an unknown key or a wrong type is one line."""
    from tfkd_cli.recipe import Recipe, merge, parse_set
    from tfkd_cli.recipe_check import build

    layer = parse_set(sets)
    try:
        build(Recipe, merge(Recipe().to_dict(), layer), "")
    except TfkdError as e:
        raise TfkdError(f"--set: {e}") from None
    return layer


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
