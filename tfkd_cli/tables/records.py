"""Run records: the small text files of a finished run, committed beside the table they fill.

A table is only as durable as the machine that ran it, unless the runs behind it travel
with it. So every finished run of a reproduction is copied to

    results/<table>/<scale>/runs/<run dir name>/{recipe.yaml, summary.json, metrics.csv}

as soon as it finishes: no checkpoints, a few kB per run. These files hold every number a
results table, its figures, its verdicts and its regime check are built from, so
`reproduce --report-only` rebuilds a committed table in a clean clone with no runs folder.

A record is found by its name, which is the run's content key (`plan.PlannedRun.dir.name`),
so a record counts as that run finished on any machine. The recipe hash stored in a summary
is not compared here: it holds the teacher's path on the machine that ran it.

A run shared by two tables (tfkd-reg reuses table3's baselines) is trained once and recorded
with every table that reports it; a finished record in any table's folder of the same scale
counts as finished.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from tfkd_cli.storage import rundir
from tfkd_cli.storage.rundir import atomic_write_text

FILES = (rundir.RECIPE, rundir.SUMMARY, rundir.METRICS)
DIRNAME = "runs"  # inside a results folder
CHECK = "rerun_check.json"  # a teacher retrained from its record: how its numbers compare


def folder(results: Path) -> Path:
    return Path(results) / DIRNAME


def roots(results: Path, scale: str, results_root: Path = Path("results")) -> list[Path]:
    """Where records of this table's runs may lie: its own results folder first, then, when that
    folder is a table's folder in `results_root` (`results/<table>/<scale>`), every table's
    folder of the same scale there (shared runs). A table written elsewhere (`--out DIR`) counts
    only its own records: the committed ones are not its runs."""
    own = folder(results).resolve()
    root = Path(results_root).resolve()
    if Path(results).resolve().parent.parent != root:
        return [own]
    others = sorted(p.resolve() for p in root.glob(f"*/{scale}/{DIRNAME}") if p.is_dir())
    return [own] + [p for p in others if p != own]


def find(name: str, where: list[Path]) -> Optional[Path]:
    """The first finished record called `name` in `where`, else None."""
    for root in where:
        d = root / name
        if all((d / f).is_file() for f in FILES) and _finished(d):
            return d
    return None


def _finished(d: Path) -> bool:
    try:
        return json.loads((d / rundir.SUMMARY).read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False  # a damaged record is no record: the run is trained again


def save(run: Path, results: Path, extra: Optional[dict] = None) -> Path:
    """Copy a finished run's records into `results`/runs/<name>/ (atomically, file by file).

    `extra` is merged into the recorded summary (e.g. the check of a retrained teacher)."""
    dest = folder(results) / Path(run).name
    dest.mkdir(parents=True, exist_ok=True)
    for f in (rundir.RECIPE, rundir.METRICS):
        atomic_write_text(dest / f, (Path(run) / f).read_text())
    summary = rundir.read_summary(run) or {}
    if extra:
        summary = {**summary, **extra}
    rundir.write_summary(dest, summary)
    return dest


def seeds(results: Path) -> set[int]:
    """The seeds of the finished records in a results folder."""
    out = set()
    for d in sorted(folder(results).glob("*")):
        if (d / rundir.SUMMARY).is_file() and _finished(d):
            seed = (rundir.read_summary(d) or {}).get("seed")
            if isinstance(seed, int):
                out.add(seed)
    return out


# -- a teacher retrained from its record ----------------------------------------------

_SKIP = ("epoch", "lr")  # not results; and every column with "time" in its name (wall clock)


def compare_metrics(new: Path, record: Path) -> dict:
    """How a retrained run's metrics.csv compares with its record: per column, the largest
    absolute difference over the epochs both hold (timings left out)."""
    a, b = _rows(new), _rows(record)
    diffs: dict[str, float] = {}
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            vb = rb.get(k)
            if k in _SKIP or "time" in k or va in (None, "") or vb in (None, ""):
                continue
            try:
                d = abs(float(va) - float(vb))
            except ValueError:
                continue
            diffs[k] = max(diffs.get(k, 0.0), d)
    equal = len(a) == len(b) and not any(diffs.values())
    return {"record": record.name, "equal": equal, "epochs": [len(a), len(b)],
            "max_abs_diff": {k: v for k, v in sorted(diffs.items()) if v}}


def _rows(run: Path) -> list[dict]:
    p = Path(run) / rundir.METRICS
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def write_check(run: Path, check: dict) -> None:
    atomic_write_text(Path(run) / CHECK, json.dumps(check, indent=2) + "\n")


def read_check(run: Path) -> Optional[dict]:
    p = Path(run) / CHECK
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
