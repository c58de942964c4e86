"""A results table as text: table.md (the paper's layout, paper value beside ours) and the long
format of table.csv, plus the verdict texts `tfkd compare` prints too."""

from __future__ import annotations

import math
from typing import Optional

from tfkd_cli.tables.controls import is_control
from tfkd_cli.tables.results import Cell, Claim, Provenance, Results, Row
from tfkd_cli.tables.verdicts import DEFAULT, criteria

NA = "n/a"
GENERATED = "report generated"  # starts the one line that differs between two writes of one table


def fmt(x: Optional[float], nd: int = 2) -> str:
    return NA if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def row_label(r: Row) -> str:
    """What a table shows for a row (tables from before `shown` show their label)."""
    return r.shown or r.label


def verdict_text(claim: Claim) -> str:
    """yes / no / inconclusive (<reason>) / n/a."""
    return claim.verdict + (f" ({claim.reason})" if claim.reason else "")


def controls_text(claim: Claim) -> Optional[str]:
    """The "beats its controls?" verdict, None for a claim without controls."""
    v = claim.controls_verdict
    return None if v is None else v + (f" ({claim.controls_reason})" if claim.controls_reason else "")


def noise_note(claim: Claim) -> Optional[str]:
    """The qualifier to print beside a claim's verdict ("within noise", "1 seed"); None when clear."""
    return None if claim.noise in (None, "clear") else claim.noise


def _cell_text(c: Cell) -> tuple[str, str]:
    paper = NA if c.paper is None else f"{c.paper:.2f}" + (f"±{c.paper_std:.2f}" if c.paper_std is not None else "")
    if not c.run:
        ours = "not run"
    elif not c.n:
        ours = "pending"
    else:
        of = f" of {c.n_planned}" if c.n_planned and c.n_planned > c.n else ""
        ours = f"{c.mean:.2f}±{c.std:.2f} (n={c.n}{of})"
        if c.n_selected:
            ours += f"; val-sel {c.selected_mean:.2f}±{c.selected_std:.2f}"
    name = f"{c.name}: " if c.name else ""
    return name + paper, ours


def to_frame(res: Results):
    """Long format: one line per (row, column) with every number."""
    import pandas as pd

    lines = []
    for r in res.rows:
        verdicts = {cl.column: cl for cl in r.claims}
        for key, c in r.cells.items():
            cl = verdicts.get(key)
            lines.append({
                "row": row_label(r), "column": key, "name": c.name,
                "paper": c.paper, "paper_std": c.paper_std, "paper_gain": c.paper_gain,
                "mean": c.mean, "std": c.std, "n": c.n,
                "best_epoch_top1": c.best_mean, "last_epoch_top1": c.last_mean,
                "train_top1": c.train_top1_mean, "delta_paper": c.delta_paper,
                "val_selected_top1": c.selected_mean, "val_selected_std": c.selected_std,
                "gain": cl.gain if cl else None, "claim": cl.text if cl else None,
                "verdict": verdict_text(cl) if cl else None, "paper_verdict": cl.paper_verdict if cl else None,
                "beats_controls": controls_text(cl) if cl else None,
                "teacher_share_first": c.teacher_share_first, "teacher_share_last": c.teacher_share_last,
            })
    return pd.DataFrame(lines)


def _short_commit(c: str) -> str:
    return c[:12] + ("+dirty" if c.endswith("+dirty") else "")


def header_lines(res: Results) -> list[str]:
    h = res.header
    p = h.provenance or Provenance()  # no run finished: nothing known
    comp = ("comparable with the paper's numbers" if h.comparable_with_paper else
            "NOT comparable with the paper's numbers (reduced protocol)")
    lines = [
        f"# {res.table}: {res.title}",
        "",
        f"- scale: **{h.scale}** - {h.scale_description} - {comp}",
        f"- dataset: {h.dataset}" + (f" ({h.data_note})" if h.data_note else "")
        + f"; the paper used {res.paper_dataset}",
        f"- seeds: {', '.join(map(str, h.seeds))}; runs finished {h.runs_finished}/{h.runs_total}"
        + (f", failed {len(h.runs_failed)}" if h.runs_failed else "")
        + (f"; still missing: {', '.join(h.runs_missing)}" if h.runs_missing else ""),
        f"- compute: {h.compute_time_s / 3600:.2f} h of runs (training and evaluation) on {p.hardware or 'n/a'} "
        f"({p.device or 'n/a'})" + (f"; {h.compute_train_only_runs} run(s) recorded training time only"
                                    if h.compute_train_only_runs else ""),
        f"- runs made by tfkd {p.tfkd} at commit {', '.join(_short_commit(c) for c in h.git_commits) or p.git_commit}; "
        f"torch {p.torch}, torchvision {p.torchvision}, Python {p.python}",
        f"- {GENERATED} {h.generated} by commit {_short_commit(h.generated_by or 'n/a')}",
        *([f"- overrides (--set, every run): {', '.join(h.overrides)}"] if h.overrides else []),
        f"- paper numbers: {res.source}",
        "- cells: paper value, then ours as mean±std over seeds (n); top-1 test accuracy (%), "
        "the epoch each run reports (official: best)",
    ]
    if h.val_selected:
        lines.append("- headline: the official number (test top-1 at the epoch the test set picks, as the paper "
                     "reports); \"val-sel\" beside it: test top-1 at the epoch picked on the validation split "
                     "(data.val_per_class), the honest estimate; verdicts and paper comparisons use the official number")
    if h.regime:
        lines.append(regime_line(h.regime))
    lines += [
        "- verdicts compare the means; \"within noise\" marks a difference smaller than two standard errors "
        "over seeds, \"1 seed\" one whose noise is unknown",
        f"- {criteria()}",
    ]
    return lines


def regime_line(regime: list) -> str:
    """The header line on the CE baselines against the regime bar (`verdicts.regime_miss`)."""
    th = DEFAULT
    parts = []
    for g in regime:
        state = "unknown" if g.held is None else "held" if g.held else f"MISSED: {g.miss}" + (
            f" ({g.why})" if g.why else "")
        parts.append(f"{g.name} test {fmt(g.test)}, train {fmt(g.train)}, gap "
                     f"{NA if g.gap is None else f'{g.gap:+.2f}'}: {state}")
    return (f"- regime of the CE baselines (bar: test top-1 >= {th.regime_test_multiple:g}x chance, at most halfway from "
            f"chance to 100%; train - test >= "
            f"{th.min_fit_gap:g} points): " + "; ".join(parts))


def _main_table(res: Results) -> str:
    """The paper's layout: per row, each column's paper value and ours, then each claim's verdict."""
    from tabulate import tabulate

    claim_texts = list(dict.fromkeys(cl.text for cl in res.claims()))
    headers = ["row"]
    for c in res.columns:  # a control column has no paper number
        headers += [f"{c.title} (ours)"] if is_control(c.key) else [f"{c.title} (paper)", f"{c.title} (ours)"]
    with_controls = [t for t in claim_texts if any(cl.text == t and controls_text(cl) for cl in res.claims())]
    headers += [f"{t}?" for t in claim_texts] + [f"{t}: beats its controls?" for t in with_controls]
    body = []
    for r in res.rows:
        line = [row_label(r)]
        for c in res.columns:
            cell = r.cells.get(c.key)
            text = list(_cell_text(cell)) if cell else ["", ""]
            line += text[1:] if is_control(c.key) else text
        by_text = {cl.text: cl for cl in r.claims}
        for t in claim_texts:
            cl = by_text.get(t)
            if not cl:
                line.append("")
                continue
            noise = f", {noise_note(cl)}" if noise_note(cl) else ""
            g = "" if cl.gain is None else f" ({cl.gain:+.2f}{noise}; paper {fmt(cl.paper_gain)})"
            line.append(f"{verdict_text(cl)}{g}")
        line += [controls_text(by_text[t]) or "" if t in by_text else "" for t in with_controls]
        body.append(line)
    return tabulate(body, headers=headers, tablefmt="github") + "\n"


def _details(res: Results) -> str:
    """Per-cell numbers beyond the mean, the strength picks and the teachers' files."""
    from tabulate import tabulate

    out = ""
    detail = [[row_label(r), key, fmt(c.best_mean), fmt(c.last_mean), fmt(c.train_top1_mean), fmt(c.delta_paper),
               fmt(c.teacher_share_first, 4), fmt(c.teacher_share_last, 4)]
              for r in res.rows for key, c in r.cells.items() if c.n]
    if detail:
        out += "\nPer cell: best-epoch and last-epoch test top-1, final train top-1 (augmented batches), " \
               "delta to the paper, teacher_share (the teacher term's share of the logit gradient, " \
               "tfkd_cli/diagnostics.py) at the first and last epoch.\n\n"
        out += tabulate(detail, headers=["row", "column", "best-epoch", "last-epoch", "train", "delta paper",
                                         "teacher_share first", "teacher_share last"],
                        tablefmt="github") + "\n"
    picked = {}
    for r in res.rows:
        for c in r.cells.values():
            for d, pk in zip(c.runs, c.picks):
                picked.setdefault(d, [c.name, d, pk.epoch, fmt(pk.top1), fmt(pk.final_top1),
                                      f"{pk.ratio:.3f}", f"{c.ratio:.2f}"])
    if picked:
        out += "\nPt-teachers chosen by strength (tfkd_cli/storage/strength.py: the epoch whose test top-1 / the run's " \
               "final test top-1 is nearest the paper's ratio; the students loaded these epochs):\n\n"
        out += tabulate(list(picked.values()), headers=["teacher", "run", "epoch", "test top-1", "final test top-1",
                                                        "ratio", "paper ratio"], tablefmt="github") + "\n"
    teachers = sorted({(t.source, t.file, t.sha256[:16]) for r in res.rows for c in r.cells.values()
                       for t in c.teachers})
    if teachers:
        out += "\nTeachers (provenance):\n\n" + "\n".join(
            f"- {src}: `{f}` sha256 {sha}..." for src, f, sha in teachers) + "\n"
    return out


def to_markdown(res: Results) -> str:
    h = res.header
    out = "\n".join(header_lines(res)) + "\n\n" + _main_table(res) + _details(res)
    if h.record_gaps:
        out += "\nRecords that lack a field (written by older code; left out where they cannot count):\n\n" + \
            "\n".join(f"- {g}" for g in h.record_gaps) + "\n"
    if h.runs_failed:
        out += "\nFailed runs:\n\n" + "\n".join(f"- {f.run}: {f.error}" for f in h.runs_failed) + "\n"
    if res.notes:
        out += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in res.notes) + "\n"
    return out


def to_csv(res: Results) -> str:
    """table.csv: the header as `#` lines, then `to_frame`."""
    meta = "".join(f"# {line.lstrip('#- ').strip()}\n" for line in header_lines(res) if line.strip())
    return meta + to_frame(res).to_csv(index=False)
