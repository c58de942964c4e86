"""Results tables: the paper's numbers beside ours, with mean ± std over seeds and verdicts.

`build_results` reads the finished runs of a plan and returns a `results.Results`; `write`
turns it into results/<table>/<scale>/{table.md, table.csv, table.json, table.png}, each
written atomically (the text by `render`, table.json by `Results.to_json`). Every number
comes from a run's summary.json or metrics.csv.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional

from tfkd_cli.storage import rundir
from tfkd_cli.storage import strength
from tfkd_cli.errors import TfkdError
from tfkd_cli.tables.figures import table_curves
from tfkd_cli.tables import render
from tfkd_cli.tables import results as R
from tfkd_cli.tables.figures import gain_figure
from tfkd_cli.tables.plan import PlannedRun, scale_epoch, unique_runs
from tfkd_cli.tables.render import NA, fmt
from tfkd_cli.tables.spec import Scale, Table
from tfkd_cli.tables.verdicts import baseline_cell, claim_verdicts, fit_gap, regime_miss
from tfkd_cli.storage.rundir import atomic_write_text


def _epoch_top1(run: Path, epoch: int) -> Optional[float]:
    for r in rundir.read_metrics(run):
        if int(r["epoch"]) == epoch:
            return float(r["test_top1"])
    return None


def _in_runs(path: str, names: set[str]) -> str:
    """A file of a planned run as `<run dir name>/<file>`, so that a committed table names no
    machine's folders (a reader finds it in --runs-dir or in the records); others as given."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name in names else path


def _release_top1(p: PlannedRun, epoch, plan: list[PlannedRun]) -> Optional[float]:
    """A released teacher's test top-1, as measured by a student that distilled from it."""
    for q in plan:
        t = q.recipe.teacher
        if t.path == str(p.release) and t.epoch == epoch:
            s = rundir.read_summary(q.source)
            if s and s.get("teacher") and s["teacher"].get("test"):
                return s["teacher"]["test"]["top1"]
    return None


def _pt_value(cell, p: PlannedRun, scale: Scale, gaps: list[str]) -> tuple[Optional[float], Optional[dict]]:
    """A pt-teacher cell's top-1 for one seed: at the scaled epoch, or at a strength scale at the
    epoch `strength.choose` picks (the one its students loaded), with that pick."""
    if scale.pt_teachers == "strength" and cell.ratio is not None:
        try:
            pick = strength.choose(p.source, cell.ratio)
        except TfkdError as e:
            _gap(gaps, p, str(e))
            return None, None
        return pick["top1"], pick
    epoch = scale_epoch(cell.epoch, scale.factor(p.recipe.model))
    v = _epoch_top1(p.source, epoch)
    if v is None:
        _gap(gaps, p, f"no test_top1 at epoch {epoch} in metrics.csv")
    return v, None


def _cell_values(cell, runs: list[PlannedRun], scale: Scale, plan: list[PlannedRun], gaps: list[str]) -> dict:
    """Per-seed values of one cell: the reported top-1 and, for reference, best, last and, for runs
    with a validation split, the test top-1 at the val-selected epoch. A record that lacks a
    field (written by older code) is named in `gaps` and skipped where it cannot count."""
    vals, best, last, train, dirs, teachers, selected, diag, picks = [], [], [], [], [], [], [], [], []
    names = {q.dir.name for q in plan}
    for p in runs:
        if p.external:  # the authors' file: only its accuracy as measured before distilling
            v = _release_top1(p, cell.epoch, plan)
            if v is not None:
                vals.append(v)
                dirs.append(str(p.release))
            continue
        s = rundir.read_summary(p.source)
        if not s or s.get("status") != "finished":
            continue
        if cell.epoch is not None:
            v, pick = _pt_value(cell, p, scale, gaps)
            if v is None:
                continue
            dirs.append(p.dir.name)
            vals.append(v)
            picks += [pick] if pick else []
            continue
        b, l = s.get("best") or {}, s.get("last") or {}
        field = "best" if p.recipe.train.report == "best" else "last"
        if (b if field == "best" else l).get("top1") is None:
            _gap(gaps, p, f"summary.json has no {field}.top1")
            continue
        dirs.append(p.dir.name)
        vals.append((b if field == "best" else l)["top1"])
        best += [b["top1"]] if b.get("top1") is not None else []
        last += [l["top1"]] if l.get("top1") is not None else []
        if s.get("selected"):
            selected.append(s["selected"]["top1"])
        if l.get("train_top1") is None:
            _gap(gaps, p, "summary.json has no last.train_top1 (the regime check cannot use it)")
        train.append(l.get("train_top1"))
        diag.append(_run_diagnostics(p.source, s))
        if s.get("teacher"):
            t = s["teacher"]
            teachers.append(R.TeacherFile(source=t.get("source"), file=_in_runs(str(t.get("file")), names),
                                          sha256=t.get("sha256") or "", top1=(t.get("test") or {}).get("top1")))
    return {"values": vals, "best": best, "last": last, "train": [t for t in train if t is not None],
            "dirs": dirs, "teachers": teachers, "selected": selected, "diag": diag, "picks": picks}


def _gap(gaps: list[str], p: PlannedRun, what: str) -> None:
    line = f"{p.name} ({p.dir.name}): {what}"
    if line not in gaps:
        gaps.append(line)


def _run_diagnostics(run: Path, s: dict) -> dict:
    """teacher_share at the first and the last epoch (metrics.csv, summary.json), None where unknown."""
    rows = rundir.read_metrics(run)
    first = rows[0].get("teacher_share") if rows else None
    last = (s.get("diagnostics") or {}).get("teacher_share")
    return {"first": float(first) if first not in (None, "") else None, "last": last}


def _diag_means(diag: list[dict]) -> dict:
    return {f"teacher_share_{k}": _mean_std([d[k] for d in diag if d[k] is not None])[0] for k in ("first", "last")}


def _cell_method(runs: list[PlannedRun]) -> Optional[str]:
    return runs[0].recipe.method if runs else None


def _chance(runs: list[PlannedRun]) -> float:
    """Chance top-1 in % (100/K): K as a finished run recorded it (a folder or cifar-layout set
    has its own), else the dataset's registered K, else CIFAR-100's."""
    from tfkd_cli.data.registry import DATASETS

    for p in runs:
        k = None if p.external else (rundir.read_summary(p.source) or {}).get("num_classes")
        if isinstance(k, int) and k > 0:
            return 100.0 / k
    info = DATASETS.get(runs[0].recipe.data.dataset) if runs else None
    return 100.0 / ((info.num_classes if info else None) or 100)


def _mean_std(xs: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def build_results(table: Table, scale: Scale, plan: list[PlannedRun], seeds: list[int],
                  sets: Optional[list[str]] = None) -> R.Results:
    by_id: dict[str, list[PlannedRun]] = {}
    for p in plan:
        by_id.setdefault(p.id, []).append(p)
    gaps: list[str] = []
    rows = []
    for row in table.rows:
        cells = {}
        for col in table.columns:
            cell = row.cells.get(col.key)
            if cell is not None:
                cells[col.key] = _cell(cell, by_id.get(cell.run, []), scale, plan, gaps)
        claims = [_claim(cl, cells, table.claims, by_id) for cl in table.claims
                  if cl.column in cells and cl.baseline in cells]
        rows.append(R.Row(label=row.label, shown=_shown_label(row.label, cells), note=row.note,
                          cells=cells, claims=claims))
    header = _header(table, scale, plan, seeds)
    header.val_selected = any(c.n_selected for r in rows for c in r.cells.values())
    header.record_gaps = gaps
    header.overrides = list(sets or [])
    header.regime = _regime(table, rows, scale, by_id)
    return R.Results(table=table.table, title=table.title, source=table.source, status=table.status,
                     paper_dataset=table.dataset, columns=[R.Column(c.key, c.title) for c in table.columns],
                     rows=rows, notes=table.notes, header=header)


def _cell(cell, runs: list[PlannedRun], scale: Scale, plan: list[PlannedRun], gaps: list[str]) -> R.Cell:
    """A recipe cell's results: the paper's numbers and, for a cell with a run, ours over `runs`."""
    c = R.Cell(name=cell.name, paper=cell.paper, paper_std=cell.paper_std, paper_gain=cell.paper_gain,
               note=cell.note, run=cell.run, epoch=cell.epoch)
    if not cell.run:
        c.n = 0
        return c
    v = _cell_values(cell, runs, scale, plan, gaps)
    mean, std = _mean_std(v["values"])
    selected_mean, selected_std = _mean_std(v["selected"])
    return replace(c, mean=mean, std=std, n=len(v["values"]), values=v["values"], n_planned=len(runs),
                   best_mean=_mean_std(v["best"])[0], last_mean=_mean_std(v["last"])[0],
                   train_top1_mean=_mean_std(v["train"])[0], runs=v["dirs"], teachers=v["teachers"],
                   n_selected=len(v["selected"]), selected_mean=selected_mean, selected_std=selected_std,
                   run_epoch=_run_epoch(cell, scale, v["picks"], runs), ratio=cell.ratio,
                   picks=[R.Pick(pk["epoch"], pk["top1"], pk["final_top1"], pk["ratio"]) for pk in v["picks"]],
                   method=_cell_method(runs), **_diag_means(v["diag"]),
                   delta_paper=None if mean is None or cell.paper is None else mean - cell.paper)


def _claim(cl, cells: dict[str, R.Cell], claims: list, by_id: dict[str, list[PlannedRun]]) -> R.Claim:
    """A recipe claim's verdicts on one row's cells; the treated cell records its gain."""
    a, b = cells[cl.column], cells[cl.baseline]
    ours, beats = claim_verdicts(cl, cells, claims, chance=_chance(by_id.get(a.run, [])))
    gain = None if a.mean is None or b.mean is None else a.mean - b.mean
    a.gain_over[cl.baseline] = gain
    return R.Claim(text=cl.text, kind=cl.kind, column=cl.column, baseline=cl.baseline, gain=gain,
                   paper_gain=None if a.paper is None or b.paper is None else a.paper - b.paper,
                   verdict=ours.outcome, reason=ours.reason, paper_verdict=_verdict(cl, a.paper, b.paper),
                   noise=_noise(gain, a, b), controls_verdict=beats.outcome if beats else None,
                   controls_reason=beats.reason if beats else None)


def _regime(table: Table, rows: list[R.Row], scale: Scale, by_id: dict[str, list[PlannedRun]]) -> list[R.Regime]:
    """Each CE baseline the table's claims compare with, once, against the regime bar; a miss
    carries the scale's account of it (`regime_notes`, by model)."""
    from tfkd_cli.models import canonical_name

    out: dict[str, R.Regime] = {}
    for row in rows:
        for cl in table.claims:
            if cl.column not in row.cells or cl.baseline not in row.cells:
                continue
            base = baseline_cell(cl, row.cells, table.claims)
            runs = by_id.get(base.run, [])
            if base.method != "ce" or not base.n or base.run in out:
                continue
            miss = regime_miss(base, _chance(runs))
            known = base.train_top1_mean is not None
            model = canonical_name(runs[0].recipe.model) if runs else None
            gap = fit_gap(base)
            out[base.run] = R.Regime(name=base.name, run=base.run, test=base.mean, train=base.train_top1_mean,
                                     gap=None if gap is None else round(gap, 4),
                                     held=(miss is None) if known else None, miss=miss,
                                     why=scale.regime_notes.get(model) if miss else None)
    return list(out.values())


def _run_epoch(cell, scale: Scale, picks: list[dict], runs: list[PlannedRun]) -> Optional[int]:
    """The teacher epoch a cell reads: the scaled epoch, or the strength pick (the latest over
    seeds; each seed's own is in `picks`)."""
    if not cell.epoch:
        return None
    if picks:
        return max(pk["epoch"] for pk in picks)
    if scale.pt_teachers == "strength" and cell.ratio is not None:
        return None
    return scale_epoch(cell.epoch, scale.factor(runs[0].recipe.model) if runs else scale.epoch_factor)


def _shown_label(label: str, cells: dict[str, R.Cell]) -> str:
    """The row label with the pt-teacher epoch this scale used: "ResNet50 (51 ep)" reads
    "ResNet50 (1 ep)" where the smoke scale kept epoch 1. `label` stays the row's key (compare
    matches rows across scales by it)."""
    for c in cells.values():
        if c.picks:  # chosen by strength: the epoch(s) and the fraction of the final top-1 reached
            epochs = "/".join(str(e) for e in sorted({pk.epoch for pk in c.picks}))
            reached = statistics.fmean(pk.ratio for pk in c.picks)
            label = label.replace(f"({c.epoch} ep)", f"(ep {epochs}: {reached:.2f} of final, paper {c.ratio:.2f})")
        elif c.epoch and c.run_epoch and c.run_epoch != c.epoch:
            label = label.replace(f"({c.epoch} ep)", f"({c.run_epoch} ep)")
    return label


def _noise(gain: Optional[float], a: R.Cell, b: R.Cell) -> Optional[str]:
    """Is a gain over seeds larger than its noise? "clear" when |gain| > 2 standard errors,
    se = sqrt(std_a^2/n_a + std_b^2/n_b); "within noise" otherwise; "1 seed" when either cell
    has fewer than two seeds (its noise is unknown)."""
    if gain is None:
        return None
    na, nb = a.n or 0, b.n or 0
    if na < 2 or nb < 2:
        return "1 seed"
    se = math.sqrt(a.std ** 2 / na + b.std ** 2 / nb)
    return "clear" if abs(gain) > 2 * se else "within noise"


def _verdict(cl, x: Optional[float], y: Optional[float]) -> str:
    if x is None or y is None:
        return NA
    if cl.kind == "matches":
        return "yes" if x >= y - cl.tolerance else "no"
    return "yes" if x > y else "no"


def _header(table: Table, scale: Scale, plan: list[PlannedRun], seeds: list[int]) -> R.Header:
    total, done, failed, prov, train_only = 0.0, 0, [], None, 0
    commits: list[str] = []  # a table's runs may span commits (a reproduction resumed after an update)
    uniq = unique_runs(plan)
    missing = []
    for p in uniq:
        s = rundir.read_summary(p.source) if not p.external else None
        if not s or s.get("status") != "finished":
            missing += [] if p.external else [p.name]
        if not s:
            continue
        run_s, train_s = s.get("run_time_s"), float(s.get("train_time_s") or 0.0)
        if run_s is not None and run_s >= train_s:  # training + evaluation + checkpoints
            total += float(run_s)
        else:  # run (partly) before tfkd recorded run time: its training time only
            total += train_s
            train_only += 1
        if s.get("status") == "finished":
            done += 1
            prov = prov or s
            if s.get("git_commit") and s["git_commit"] not in commits:
                commits.append(s["git_commit"])
        elif s.get("status") == "failed":
            failed.append(R.Failure(run=p.name, error=s.get("error")))
    datasets = sorted({p.recipe.data.dataset for p in plan})
    keys = [f.name for f in fields(R.Provenance)]
    return R.Header(
        scale=scale.scale, scale_description=scale.description,
        comparable_with_paper=scale.comparable_with_paper,
        dataset=", ".join(datasets), data_note=scale.data_note,
        seeds=seeds, runs_total=len(uniq), runs_finished=done, runs_failed=failed,
        runs_missing=missing,
        compute_time_s=round(total, 1), compute_train_only_runs=train_only,
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        generated_by=rundir.git_commit(),  # the code that wrote this report (the runs' own: git_commits)
        provenance=R.Provenance(**{k: prov.get(k) for k in keys}) if prov else None,
        git_commits=commits,
    )


def write(res: R.Results, out: Path, roots: tuple[Path, ...] = (Path("."),)) -> list[Path]:
    """The table's files in `out`; `roots` are the folders its cells' runs are named in (the runs
    folder, then the record folders)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / R.FILE, res.to_json())
    atomic_write_text(out / "table.csv", render.to_csv(res))
    atomic_write_text(out / "table.md", render.to_markdown(res))
    gain_figure(res, out / "table.png")
    curves = ["curves.png"] if table_curves(res, out / "curves.png", roots) else []
    return [out / n for n in ("table.md", "table.csv", R.FILE, "table.png", *curves)]


# -- a table against the one it replaces ------------------------------------------------


def read_table(folder: Path) -> Optional[R.Results]:
    """A results folder's table.json, or None when there is none (or it cannot be read, or it
    is of a newer schema: then there is nothing this code can compare with)."""
    p = Path(folder) / R.FILE
    try:
        return R.read(p) if p.is_file() else None
    except TfkdError:
        return None


def cell_changes(before: R.Results, res: R.Results, what: str) -> str:
    """One line per cell whose mean or seed count differs from `before` (a table read back)."""
    old = {(r.label, k): c for r in before.rows for k, c in r.cells.items()}
    lines = []
    for r in res.rows:
        for k, c in r.cells.items():
            o = old.get((r.label, k), R.Cell())
            if (fmt(o.mean), o.n) != (fmt(c.mean), c.n):
                # matched by the row's key, shown as the new table shows it (its pt-teacher epoch)
                lines.append(f"  {render.row_label(r)} / {k}: {fmt(o.mean)} (n={o.n}) -> {fmt(c.mean)} (n={c.n})")
    if not lines:
        return f"every cell equals {what}"
    return f"{len(lines)} cell(s) differ from {what}:\n" + "\n".join(lines)
