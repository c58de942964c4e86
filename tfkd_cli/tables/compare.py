"""`tfkd compare`: results folders against the paper or each other; run directories side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.tables import records
from tfkd_cli.tables import results as R
from tfkd_cli.tables.render import controls_text, noise_note, row_label, verdict_text


def _kind(p: Path) -> str:
    if (p / R.FILE).is_file():
        return "results"
    if (p / rundir.SUMMARY).is_file():
        return "run"
    raise TfkdError(f"{p}: neither a results folder (table.json) nor a run directory (summary.json)")


def _load_results(p: Path) -> R.Results:
    return R.read(p / R.FILE)


def compare(paths: list[str], *, fmt: str = "rich", tolerance: float = 2.0,
            echo: Callable[[str], None] = print) -> int:
    """Print the comparison; returns the number of claims that do not hold (for --fail-on-claims)."""
    ps = [Path(p) for p in paths]
    for p in ps:
        if not p.exists():
            raise TfkdError(f"not found: {p}")
    kinds = {_kind(p) for p in ps}
    if len(kinds) > 1:
        raise TfkdError("compare either results folders or run directories, not a mix")
    if kinds == {"run"}:
        return _runs(ps, fmt, echo)
    if len(ps) == 1:
        res = _load_results(ps[0])
        return _vs_paper(res, fmt, tolerance, echo, records_note(ps[0], res))
    if len(ps) == 2:
        return _two_results(_load_results(ps[0]), _load_results(ps[1]), str(ps[0]), str(ps[1]), fmt, tolerance, echo)
    raise TfkdError("compare takes one results folder (vs the paper) or two (row by row)")


def claim_counts(paths: list[str]) -> Optional[str]:
    """The outcome counts of the last results folder's claims (the one --fail-on-claims judges)."""
    p = Path(paths[-1])
    if _kind(p) == "run":
        return None
    return tally(_load_results(p).claims())


def _emit(headers: list[str], rows: list[list], flags: list[bool], fmt: str, title: str,
          echo: Callable[[str], None], notes: Optional[list[str]] = None) -> None:
    if fmt == "json":
        echo(json.dumps({"title": title, "rows": [dict(zip(headers, r)) for r in rows],
                         "flagged": flags, "notes": notes or []}, indent=2))
        return
    if fmt in ("md", "csv"):
        import pandas as pd

        df = pd.DataFrame(rows, columns=headers)
        if fmt == "csv":
            echo(df.to_csv(index=False).rstrip("\n"))
        else:
            from tabulate import tabulate

            echo(f"{title}\n\n" + tabulate(rows, headers=headers, tablefmt="github"))
            for n in notes or []:
                echo(n)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for h in headers:
        t.add_column(h)
    for r, bad in zip(rows, flags):
        t.add_row(*[("" if v is None else str(v)) for v in r], style="bold red" if bad else None)
    console = Console(width=200)
    console.print(t)
    for n in notes or []:
        console.print(n)


def _verdict_text(cl: R.Claim) -> str:
    """yes / no / inconclusive (<reason>), with the noise qualifier when the difference is not
    clear of seed noise, and the "beats its controls?" verdict where the claim has controls."""
    note = noise_note(cl) if cl.verdict in ("yes", "no") else None
    ctrl = controls_text(cl)
    return verdict_text(cl) + (f" ({note})" if note else "") + (f"; beats its controls: {ctrl}" if ctrl else "")


OUTCOMES = ("yes", "no", "inconclusive", "n/a")


def tally(claims: list[R.Claim], key: str = "verdict") -> str:
    """How many claims came out yes, no, inconclusive and n/a (each counted apart); `key`: the
    Claim field that holds the outcome."""
    n = {o: sum(getattr(cl, key) == o for cl in claims) for o in OUTCOMES}
    return ", ".join(f"{n[o]} {o}" for o in OUTCOMES)


def _tally_note(claims: list[R.Claim], what: str = "claims") -> str:
    ctrl = [cl for cl in claims if cl.controls_verdict]
    return f"{what}: {tally(claims)}" + (f"; beats its controls: {tally(ctrl, 'controls_verdict')}" if ctrl else "")


def _f(x: Optional[float], sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.2f}" if sign else f"{x:.2f}"


def records_note(folder: Path, res: R.Results) -> str:
    """Whether the run records behind a results folder are all there (tables/records.py)."""
    named = {d for r in res.rows for c in r.cells.values() for d in c.runs
             if not Path(d).is_absolute() and "/" not in d}  # release files are paths, runs are names
    held = {d.name for d in records.folder(folder).glob("*") if records.find(d.name, [records.folder(folder)])}
    if not held:
        return "records: none (a table without its runs' records cannot be re-derived)"
    lacking = sorted(named - held)
    if not lacking:
        return f"records: {len(held)} runs, every run the table names"
    return f"records: {len(held)} runs; {len(lacking)} run(s) the table names have none: {', '.join(lacking)}"


def _vs_paper(res: R.Results, fmt: str, tol: float, echo: Callable[[str], None], records_line: str = "") -> int:
    h = res.header
    headers = ["row", "cell", "paper", "ours", "n", "delta", "claim", "verdict", "paper verdict"]
    rows, flags, failed = [], [], 0
    for r in res.rows:
        claims: dict[str, list[R.Claim]] = {}
        for cl in r.claims:  # a cell may carry several claims (Tf-KD_reg: improves, matches KD)
            claims.setdefault(cl.column, []).append(cl)
        for key, c in r.cells.items():
            cls = claims.get(key, [])
            ours = None if c.mean is None else f"{c.mean:.2f}±{(c.std or 0):.2f}"
            delta = c.delta_paper
            bad = sum(cl.verdict == "no" for cl in cls)
            failed += bad
            far = delta is not None and abs(delta) > tol and h.comparable_with_paper
            rows.append([row_label(r), c.name or key, _f(c.paper), ours or "n/a", c.n or 0,
                         _f(delta, True), "; ".join(cl.text for cl in cls),
                         "; ".join(_verdict_text(cl) for cl in cls), "; ".join(cl.paper_verdict for cl in cls)])
            flags.append(bool(bad) or far)
    note = (f"scale {h.scale} on {h.dataset}, seeds {h.seeds}; "
            + ("comparable with the paper" if h.comparable_with_paper else
               "NOT comparable with the paper (reduced protocol): compare claims, not numbers"))
    _emit(headers, rows, flags, fmt, f"{res.table}: {res.title}", echo,
          [note, _tally_note(res.claims()),
           f"highlighted: a claim that does not hold, or |delta| > {tol} at a comparable scale",
           *([records_line] if records_line else [])])
    return failed


def _two_results(a: R.Results, b: R.Results, na: str, nb: str, fmt: str, tol: float,
                 echo: Callable[[str], None]) -> int:
    if a.table != b.table:
        raise TfkdError(f"different tables: {a.table} vs {b.table}")
    brows = {r.label: r for r in b.rows}
    headers = ["row", "cell", "paper", f"A ({a.header.scale})", f"B ({b.header.scale})", "B - A",
               "verdict A", "verdict B"]
    rows, flags, failed = [], [], 0
    for r in a.rows:
        rb = brows.get(r.label)
        ca = {cl.column: cl for cl in r.claims}
        cb = {cl.column: cl for cl in rb.claims} if rb else {}
        for key, c in r.cells.items():
            d = rb.cells.get(key) if rb else None
            ma, mb = c.mean, (d.mean if d else None)
            diff = None if ma is None or mb is None else mb - ma
            va, vb = (ca[key].verdict if key in ca else ""), (cb[key].verdict if key in cb else "")
            failed += vb == "no"
            rows.append([r.label, c.name or key, _f(c.paper), _f(ma), _f(mb), _f(diff, True), va, vb])
            flags.append((diff is not None and abs(diff) > tol) or va != vb)
    _emit(headers, rows, flags, fmt, f"{a.table}: A = {na}, B = {nb}", echo,
          [_tally_note(a.claims(), "claims A"), _tally_note(b.claims(), "claims B"),
           f"highlighted: |B - A| > {tol} or verdicts that differ"])
    return failed


def _runs(ps: list[Path], fmt: str, echo: Callable[[str], None]) -> int:
    fields = [("model", "model"), ("width", "width"), ("method", "method"), ("dataset", "dataset"),
              ("seed", "seed"), ("epochs", "epochs_done"), ("status", "status")]
    headers = ["run"] + [f for f, _ in fields] + ["best top-1", "best epoch", "last top-1", "train top-1",
                                                   "NLL", "ECE", "time (s)", "img/s"]
    rows = []
    for p in ps:
        s = rundir.read_summary(p) or {}
        b, l = s.get("best") or {}, s.get("last") or {}
        rows.append([str(p)] + [s.get(k) for _, k in fields] +
                    [b.get("top1"), b.get("epoch"), l.get("top1"), l.get("train_top1"), b.get("nll"), b.get("ece"),
                     s.get("train_time_s"), s.get("images_per_s")])
    _emit(headers, rows, [False] * len(rows), fmt, "runs", echo)
    return 0
