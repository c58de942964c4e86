"""Results tables: the paper's numbers beside ours, with mean ± std over seeds and verdicts.

`build_results` reads the finished runs of a plan and returns one JSON-able dict; `write`
turns it into results/<table>/<scale>/{table.md, table.csv, table.json, table.png}, each
written atomically. Every number comes from a run's summary.json or metrics.csv.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
from pathlib import Path
from typing import Optional

from tfkd_cli import rundir, strength
from tfkd_cli.checkpoint import atomic_write_text
from tfkd_cli.errors import TfkdError
from tfkd_cli.plots import table_curves
from tfkd_cli.reproduce.controls import is_control
from tfkd_cli.reproduce.figures import gain_figure
from tfkd_cli.reproduce.plan import PlannedRun, scale_epoch, unique_runs
from tfkd_cli.reproduce.spec import Scale, Table
from tfkd_cli.reproduce.verdicts import claim_verdicts, criteria

NA = "n/a"
GENERATED = "report generated"  # starts the one line that differs between two writes of one table


def _fmt(x: Optional[float], nd: int = 2) -> str:
    return NA if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


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
            teachers.append({"source": t.get("source"), "file": _in_runs(str(t.get("file")), names),
                             "sha256": t.get("sha256") or "", "top1": (t.get("test") or {}).get("top1")})
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
                  sets: Optional[list[str]] = None) -> dict:
    by_id: dict[str, list[PlannedRun]] = {}
    for p in plan:
        by_id.setdefault(p.id, []).append(p)
    gaps: list[str] = []
    rows = []
    for row in table.rows:
        cells = {}
        for col in table.columns:
            cell = row.cells.get(col.key)
            if cell is None:
                continue
            c = {"name": cell.name, "paper": cell.paper, "paper_std": cell.paper_std,
                 "paper_gain": cell.paper_gain, "note": cell.note, "run": cell.run, "epoch": cell.epoch}
            if cell.run:
                v = _cell_values(cell, by_id.get(cell.run, []), scale, plan, gaps)
                mean, std = _mean_std(v["values"])
                c.update({"mean": mean, "std": std, "n": len(v["values"]), "values": v["values"],
                          "n_planned": len(by_id.get(cell.run, [])),
                          "best_mean": _mean_std(v["best"])[0], "last_mean": _mean_std(v["last"])[0],
                          "train_top1_mean": _mean_std(v["train"])[0], "runs": v["dirs"],
                          "teachers": v["teachers"], "n_selected": len(v["selected"]),
                          "selected_mean": _mean_std(v["selected"])[0], "selected_std": _mean_std(v["selected"])[1],
                          "run_epoch": _run_epoch(cell, scale, v["picks"], by_id.get(cell.run, [])), "ratio": cell.ratio,
                          "picks": [{k: pk[k] for k in ("epoch", "top1", "final_top1", "ratio")} for pk in v["picks"]],
                          "method": _cell_method(by_id.get(cell.run, [])), **_diag_means(v["diag"]),
                          "delta_paper": None if mean is None or cell.paper is None else mean - cell.paper})
            else:
                c.update({"mean": None, "std": None, "n": 0})
            cells[col.key] = c
        claims = []
        for cl in table.claims:
            a, b = cells.get(cl.column), cells.get(cl.baseline)
            if a is None or b is None:
                continue
            ours, beats = claim_verdicts(cl, cells, table.claims, chance=_chance(by_id.get(a.get("run"), [])))
            paper = _verdict(cl, a.get("paper"), b.get("paper"))
            gain = None if a.get("mean") is None or b.get("mean") is None else a["mean"] - b["mean"]
            paper_gain = None if a.get("paper") is None or b.get("paper") is None else a["paper"] - b["paper"]
            claims.append({"text": cl.text, "kind": cl.kind, "column": cl.column, "baseline": cl.baseline,
                           "gain": gain, "paper_gain": paper_gain, "verdict": ours.outcome, "reason": ours.reason,
                           "paper_verdict": paper, "noise": _noise(gain, a, b),
                           **({"controls_verdict": beats.outcome, "controls_reason": beats.reason} if beats else {})})
            a.setdefault("gain_over", {})[cl.baseline] = gain
        rows.append({"label": row.label, "shown": _shown_label(row.label, cells), "note": row.note,
                     "cells": cells, "claims": claims})
    header = _header(table, scale, plan, seeds)
    header["val_selected"] = any(c.get("n_selected") for r in rows for c in r["cells"].values())
    header["record_gaps"] = gaps
    return {"table": table.table, "title": table.title, "source": table.source, "status": table.status,
            "paper_dataset": table.dataset, "columns": [{"key": c.key, "title": c.title} for c in table.columns],
            "rows": rows, "notes": table.notes, "header": {**header, "overrides": list(sets or [])}}


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


def _shown_label(label: str, cells: dict) -> str:
    """The row label with the pt-teacher epoch this scale used: "ResNet50 (51 ep)" reads
    "ResNet50 (1 ep)" where the smoke scale kept epoch 1. `label` stays the row's key (compare
    matches rows across scales by it)."""
    for c in cells.values():
        if c.get("picks"):  # chosen by strength: the epoch(s) and the fraction of the final top-1 reached
            epochs = "/".join(str(e) for e in sorted({pk["epoch"] for pk in c["picks"]}))
            reached = statistics.fmean(pk["ratio"] for pk in c["picks"])
            label = label.replace(f"({c['epoch']} ep)", f"(ep {epochs}: {reached:.2f} of final, paper {c['ratio']:.2f})")
        elif c.get("epoch") and c.get("run_epoch") and c["run_epoch"] != c["epoch"]:
            label = label.replace(f"({c['epoch']} ep)", f"({c['run_epoch']} ep)")
    return label


def row_label(r: dict) -> str:
    """What a table shows for a row (tables from before `shown` show their label)."""
    return r.get("shown") or r["label"]


def _noise(gain: Optional[float], a: dict, b: dict) -> Optional[str]:
    """Is a gain over seeds larger than its noise? "clear" when |gain| > 2 standard errors,
    se = sqrt(std_a^2/n_a + std_b^2/n_b); "within noise" otherwise; "1 seed" when either cell
    has fewer than two seeds (its noise is unknown)."""
    if gain is None:
        return None
    na, nb = a.get("n") or 0, b.get("n") or 0
    if na < 2 or nb < 2:
        return "1 seed"
    se = math.sqrt(a["std"] ** 2 / na + b["std"] ** 2 / nb)
    return "clear" if abs(gain) > 2 * se else "within noise"


def verdict_text(claim: dict) -> str:
    """yes / no / inconclusive (<reason>) / n/a."""
    return claim["verdict"] + (f" ({claim['reason']})" if claim.get("reason") else "")


def controls_text(claim: dict) -> Optional[str]:
    """The "beats its controls?" verdict, None for a claim without controls."""
    v = claim.get("controls_verdict")
    return None if v is None else v + (f" ({claim['controls_reason']})" if claim.get("controls_reason") else "")


def noise_note(claim: dict) -> Optional[str]:
    """The qualifier to print beside a claim's verdict ("within noise", "1 seed"); None when clear."""
    return None if claim.get("noise") in (None, "clear") else claim["noise"]


def _verdict(cl, x: Optional[float], y: Optional[float]) -> str:
    if x is None or y is None:
        return NA
    if cl.kind == "matches":
        return "yes" if x >= y - cl.tolerance else "no"
    return "yes" if x > y else "no"


def _header(table: Table, scale: Scale, plan: list[PlannedRun], seeds: list[int]) -> dict:
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
            failed.append({"run": p.name, "error": s.get("error")})
    datasets = sorted({p.recipe.data.dataset for p in plan})
    keys = ("tfkd", "git_commit", "torch", "torchvision", "python", "device", "hardware")
    return {
        "scale": scale.scale, "scale_description": scale.description,
        "comparable_with_paper": scale.comparable_with_paper,
        "dataset": ", ".join(datasets), "data_note": scale.data_note,
        "seeds": seeds, "runs_total": len(uniq), "runs_finished": done, "runs_failed": failed,
        "runs_missing": missing,
        "compute_time_s": round(total, 1), "compute_train_only_runs": train_only,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generated_by": rundir.git_commit(),  # the code that wrote this report (the runs' own: git_commits)
        **({k: prov.get(k) for k in keys} if prov else {}),
        "git_commits": commits,
    }


# -- rendering -----------------------------------------------------------------------


def _cell_text(c: dict) -> tuple[str, str]:
    paper = NA if c.get("paper") is None else (
        f"{c['paper']:.2f}" + (f"±{c['paper_std']:.2f}" if c.get("paper_std") is not None else ""))
    if not c.get("run"):
        ours = "not run"
    elif not c.get("n"):
        ours = "pending"
    else:
        of = f" of {c['n_planned']}" if c.get("n_planned") and c["n_planned"] > c["n"] else ""
        ours = f"{c['mean']:.2f}±{c['std']:.2f} (n={c['n']}{of})"
        if c.get("n_selected"):
            ours += f"; val-sel {c['selected_mean']:.2f}±{c['selected_std']:.2f}"
    name = f"{c['name']}: " if c.get("name") else ""
    return name + paper, ours


def to_frame(res: dict):
    """Long format: one line per (row, column) with every number."""
    import pandas as pd

    lines = []
    for r in res["rows"]:
        verdicts = {cl["column"]: cl for cl in r["claims"]}
        for key, c in r["cells"].items():
            cl = verdicts.get(key)
            lines.append({
                "row": row_label(r), "column": key, "name": c.get("name"),
                "paper": c.get("paper"), "paper_std": c.get("paper_std"), "paper_gain": c.get("paper_gain"),
                "mean": c.get("mean"), "std": c.get("std"), "n": c.get("n"),
                "best_epoch_top1": c.get("best_mean"), "last_epoch_top1": c.get("last_mean"),
                "train_top1": c.get("train_top1_mean"), "delta_paper": c.get("delta_paper"),
                "val_selected_top1": c.get("selected_mean"), "val_selected_std": c.get("selected_std"),
                "gain": cl["gain"] if cl else None, "claim": cl["text"] if cl else None,
                "verdict": verdict_text(cl) if cl else None, "paper_verdict": cl["paper_verdict"] if cl else None,
                "beats_controls": controls_text(cl) if cl else None,
                "teacher_share_first": c.get("teacher_share_first"), "teacher_share_last": c.get("teacher_share_last"),
            })
    return pd.DataFrame(lines)


def _short_commit(c: str) -> str:
    return c[:12] + ("+dirty" if c.endswith("+dirty") else "")


def header_lines(res: dict) -> list[str]:
    h = res["header"]
    comp = ("comparable with the paper's numbers" if h["comparable_with_paper"] else
            "NOT comparable with the paper's numbers (reduced protocol)")
    lines = [
        f"# {res['table']}: {res['title']}",
        "",
        f"- scale: **{h['scale']}** - {h['scale_description']} - {comp}",
        f"- dataset: {h['dataset']}" + (f" ({h['data_note']})" if h.get("data_note") else "")
        + f"; the paper used {res['paper_dataset']}",
        f"- seeds: {', '.join(map(str, h['seeds']))}; runs finished {h['runs_finished']}/{h['runs_total']}"
        + (f", failed {len(h['runs_failed'])}" if h["runs_failed"] else "")
        + (f"; still missing: {', '.join(h['runs_missing'])}" if h.get("runs_missing") else ""),
        f"- compute: {h['compute_time_s'] / 3600:.2f} h of runs (training and evaluation) on {h.get('hardware') or 'n/a'} "
        f"({h.get('device') or 'n/a'})" + (f"; {h['compute_train_only_runs']} run(s) recorded training time only"
                                          if h.get("compute_train_only_runs") else ""),
        f"- runs made by tfkd {h.get('tfkd')} at commit {', '.join(_short_commit(c) for c in h.get('git_commits') or []) or h.get('git_commit')}; torch {h.get('torch')}, torchvision "
        f"{h.get('torchvision')}, Python {h.get('python')}",
        f"- {GENERATED} {h['generated']} by commit {_short_commit(h.get('generated_by') or 'n/a')}",
        *([f"- overrides (--set, every run): {', '.join(h['overrides'])}"] if h.get("overrides") else []),
        f"- paper numbers: {res['source']}",
        "- cells: paper value, then ours as mean±std over seeds (n); top-1 test accuracy (%), "
        "the epoch each run reports (official: best)",
    ]
    if h.get("val_selected"):
        lines.append("- headline: the official number (test top-1 at the epoch the test set picks, as the paper "
                     "reports); \"val-sel\" beside it: test top-1 at the epoch picked on the validation split "
                     "(data.val_per_class), the honest estimate; verdicts and paper comparisons use the official number")
    lines += [
        "- verdicts compare the means; \"within noise\" marks a difference smaller than two standard errors "
        "over seeds, \"1 seed\" one whose noise is unknown",
        f"- {criteria()}",
    ]
    return lines


def to_markdown(res: dict) -> str:
    from tabulate import tabulate

    cols = res["columns"]
    claim_texts = []
    for r in res["rows"]:
        for cl in r["claims"]:
            if cl["text"] not in claim_texts:
                claim_texts.append(cl["text"])
    headers = ["row"]
    for c in cols:  # a control column has no paper number
        headers += [f"{c['title']} (ours)"] if is_control(c["key"]) else [f"{c['title']} (paper)", f"{c['title']} (ours)"]
    with_controls = [t for t in claim_texts if any(cl["text"] == t and controls_text(cl) for r in res["rows"]
                                                     for cl in r["claims"])]
    headers += [f"{t}?" for t in claim_texts] + [f"{t}: beats its controls?" for t in with_controls]
    body = []
    for r in res["rows"]:
        line = [row_label(r)]
        for c in cols:
            cell = r["cells"].get(c["key"])
            text = list(_cell_text(cell)) if cell else ["", ""]
            line += text[1:] if is_control(c["key"]) else text
        by_text = {cl["text"]: cl for cl in r["claims"]}
        for t in claim_texts:
            cl = by_text.get(t)
            if not cl:
                line.append("")
                continue
            noise = f", {noise_note(cl)}" if noise_note(cl) else ""
            g = "" if cl["gain"] is None else f" ({cl['gain']:+.2f}{noise}; paper {_fmt(cl['paper_gain'])})"
            line.append(f"{verdict_text(cl)}{g}")
        line += [controls_text(by_text[t]) or "" if t in by_text else "" for t in with_controls]
        body.append(line)
    out = "\n".join(header_lines(res)) + "\n\n" + tabulate(body, headers=headers, tablefmt="github") + "\n"
    detail = []
    for r in res["rows"]:
        for key, c in r["cells"].items():
            if c.get("n"):
                detail.append([row_label(r), key, _fmt(c.get("best_mean")), _fmt(c.get("last_mean")),
                               _fmt(c.get("train_top1_mean")), _fmt(c.get("delta_paper")),
                               _fmt(c.get("teacher_share_first"), 4), _fmt(c.get("teacher_share_last"), 4)])
    if detail:
        out += "\nPer cell: best-epoch and last-epoch test top-1, final train top-1 (augmented batches), " \
               "delta to the paper, teacher_share (the teacher term's share of the logit gradient, " \
               "tfkd_cli/diagnostics.py) at the first and last epoch.\n\n"
        out += tabulate(detail, headers=["row", "column", "best-epoch", "last-epoch", "train", "delta paper",
                                         "teacher_share first", "teacher_share last"],
                        tablefmt="github") + "\n"
    picked = {}
    for r in res["rows"]:
        for c in r["cells"].values():
            for d, pk in zip(c.get("runs") or [], c.get("picks") or []):
                picked.setdefault(d, [c.get("name"), d, pk["epoch"], _fmt(pk["top1"]), _fmt(pk["final_top1"]),
                                      f"{pk['ratio']:.3f}", f"{c['ratio']:.2f}"])
    if picked:
        out += "\nPt-teachers chosen by strength (tfkd_cli/strength.py: the epoch whose test top-1 / the run's " \
               "final test top-1 is nearest the paper's ratio; the students loaded these epochs):\n\n"
        out += tabulate(list(picked.values()), headers=["teacher", "run", "epoch", "test top-1", "final test top-1",
                                                        "ratio", "paper ratio"], tablefmt="github") + "\n"
    teachers = sorted({(t["source"], t["file"], t["sha256"][:16]) for r in res["rows"]
                       for c in r["cells"].values() for t in c.get("teachers") or []})
    if teachers:
        out += "\nTeachers (provenance):\n\n" + "\n".join(
            f"- {src}: `{f}` sha256 {sha}..." for src, f, sha in teachers) + "\n"
    if res["header"].get("record_gaps"):
        out += "\nRecords that lack a field (written by older code; left out where they cannot count):\n\n" + \
            "\n".join(f"- {g}" for g in res["header"]["record_gaps"]) + "\n"
    if res["header"]["runs_failed"]:
        out += "\nFailed runs:\n\n" + "\n".join(f"- {f['run']}: {f['error']}" for f in res["header"]["runs_failed"]) + "\n"
    if res.get("notes"):
        out += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in res["notes"]) + "\n"
    return out


def write(res: dict, out: Path, roots: tuple[Path, ...] = (Path("."),)) -> list[Path]:
    """The table's files in `out`; `roots` are the folders its cells' runs are named in (the runs
    folder, then the record folders)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.json", json.dumps(res, indent=2) + "\n")
    frame = to_frame(res)
    meta = "".join(f"# {line.lstrip('#- ').strip()}\n" for line in header_lines(res) if line.strip())
    atomic_write_text(out / "table.csv", meta + frame.to_csv(index=False))
    atomic_write_text(out / "table.md", to_markdown(res))
    gain_figure(res, out / "table.png")
    curves = ["curves.png"] if table_curves(res, out / "curves.png", roots) else []
    return [out / n for n in ("table.md", "table.csv", "table.json", "table.png", *curves)]


# -- a table against the one it replaces ------------------------------------------------


def read_table(folder: Path) -> Optional[dict]:
    """A results folder's table.json, or None when there is none (or it cannot be read)."""
    p = Path(folder) / "table.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def cell_changes(before: dict, res: dict, what: str) -> str:
    """One line per cell whose mean or seed count differs from `before` (a table read back)."""
    old = {(r["label"], k): c for r in before.get("rows", []) for k, c in r.get("cells", {}).items()}
    lines = []
    for r in res["rows"]:
        for k, c in r["cells"].items():
            o = old.get((r["label"], k), {})
            if (_fmt(o.get("mean")), o.get("n")) != (_fmt(c.get("mean")), c.get("n")):
                lines.append(f"  {r['label']} / {k}: {_fmt(o.get('mean'))} (n={o.get('n')}) -> "
                             f"{_fmt(c.get('mean'))} (n={c.get('n')})")
    if not lines:
        return f"every cell equals {what}"
    return f"{len(lines)} cell(s) differ from {what}:\n" + "\n".join(lines)
