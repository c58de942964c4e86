"""Sweep results: every point's validation top-1 (mean ± std over seeds) and its test top-1 at the
val-selected epoch, the chosen point marked; written as sweeps/<name>/sweep.{md,csv,json,png}.

Each run contributes its `selected` epoch (best validation top-1, `tfkd_cli.storage.selection`): the
val top-1 there decides, and the test top-1 there is reported. `choose` reads validation
numbers only, so the test set cannot move the choice. Every number comes from a run's
summary.json.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import statistics
from pathlib import Path
from typing import Optional

from tfkd_cli.storage import rundir
from tfkd_cli.storage.rundir import atomic_write_text
from tfkd_cli.tables.figures import show_value, sweep_figure

RULE = ("chosen: the point with the best mean validation top-1 over seeds, each run at its best-validation "
        "epoch (ties: lower mean validation NLL, then grid order); the test set plays no part in the choice")


def _mean_std(xs: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def point_result(params: dict, label: str, runs: list) -> dict:
    """One point's numbers from its runs' summaries (finished runs with a validation split only)."""
    val, val_nll, test, epochs, dirs, failed = [], [], [], [], [], 0
    for p in runs:
        s = rundir.read_summary(p.dir)
        if s and s.get("status") == "failed":
            failed += 1
        if not s or s.get("status") != "finished" or s.get("recipe_hash") != p.recipe.hash() or not s.get("selected"):
            continue
        sel = s["selected"]
        val.append(float(sel["val_top1"]))
        val_nll.append(float(sel["val_nll"]))
        test.append(float(sel["top1"]))
        epochs.append(int(sel["epoch"]))
        dirs.append(str(p.dir))
    vm, vs = _mean_std(val)
    tm, ts = _mean_std(test)
    status = "finished" if len(val) == len(runs) else ("failed" if failed else "pending")
    return {"params": params, "label": label, "status": status, "n": len(val), "seeds": len(runs),
            "val_mean": vm, "val_std": vs, "val_nll_mean": _mean_std(val_nll)[0], "val_values": val,
            "test_mean": tm, "test_std": ts, "test_values": test, "selected_epochs": epochs, "runs": dirs}


def choose(points: list[dict]) -> Optional[int]:
    """Index of the chosen point: among points with every seed finished, the highest mean val
    top-1, then the lower mean val NLL, then the first in grid order. Reads no test number."""
    best = None
    for i, p in enumerate(points):
        if p["status"] != "finished":
            continue
        if best is None or (p["val_mean"], -p["val_nll_mean"]) > (points[best]["val_mean"], -points[best]["val_nll_mean"]):
            best = i
    return best


def _header(points: list, runs: list) -> dict:
    total, prov, commits = 0.0, None, []
    for p in runs:
        s = rundir.read_summary(p.dir)
        if not s:
            continue
        total += float(s.get("run_time_s") or s.get("train_time_s") or 0.0)
        if s.get("status") == "finished":
            prov = prov or s
            if s.get("git_commit") and s["git_commit"] not in commits:
                commits.append(s["git_commit"])
    keys = ("tfkd", "torch", "python", "device", "hardware")
    return {"compute_time_s": round(total, 1), "git_commits": commits,
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **({k: prov.get(k) for k in keys} if prov else {})}


def build_results(name: str, axes: list, points: list, seeds: list[int]) -> dict:
    """The sweep as one JSON-able dict (`axes`: sweep.Axis, `points`: sweep.Point)."""
    rows = [point_result(p.params, p.label, p.runs) for p in points]
    chosen = choose(rows)
    for i, r in enumerate(rows):
        r["chosen"] = i == chosen
    b = points[0].runs[0].recipe
    base = {"dataset": b.data.dataset, "model": b.model, "width": b.width, "method": b.method,
            "epochs": b.train.epochs, "val_per_class": b.data.val_per_class, "subset_seed": b.data.subset_seed,
            "per_class": b.data.per_class}
    return {"sweep": name, "axes": [{"key": a.key, "values": a.values} for a in axes], "seeds": seeds,
            "base": base, "rule": RULE, "chosen": None if chosen is None else rows[chosen]["params"],
            "points": rows, "header": _header(points, [r for p in points for r in p.runs])}


# -- rendering -----------------------------------------------------------------------


def _pm(m: Optional[float], s: Optional[float]) -> str:
    return "n/a" if m is None else f"{m:.2f}±{s:.2f}"


def header_lines(res: dict) -> list[str]:
    b, h = res["base"], res["header"]
    grid = "; ".join(f"{a['key']} = {', '.join(show_value(v) for v in a['values'])}" for a in res["axes"])
    ch = next((p for p in res["points"] if p["chosen"]), None)
    return [
        f"# sweep {res['sweep']}: {b['method']} {b['model']} x{b['width']:g} on {b['dataset']}",
        "",
        f"- grid: {grid} ({len(res['points'])} points x {len(res['seeds'])} seed(s): "
        f"{', '.join(map(str, res['seeds']))})",
        f"- {b['epochs']} epochs; validation split: {b['val_per_class']} training images per class held out "
        f"(data.subset_seed {b['subset_seed']})" + (f"; training subset {b['per_class']} per class" if b["per_class"] else ""),
        f"- {res['rule']}",
        "- test top-1: at each run's validation-selected epoch (mean±std over seeds)",
        "- chosen: " + (f"**{ch['label']}** - val {_pm(ch['val_mean'], ch['val_std'])}, "
                        f"test {_pm(ch['test_mean'], ch['test_std'])}" if ch else "none yet (no point has all its seeds finished)"),
        f"- compute: {h['compute_time_s'] / 60:.1f} min of runs on {h.get('hardware') or 'n/a'} ({h.get('device') or 'n/a'}); "
        f"tfkd {h.get('tfkd')} at commit {', '.join(c[:12] + ('+dirty' if c.endswith('+dirty') else '') for c in h['git_commits']) or 'n/a'}; "
        f"generated {h['generated']}",
    ]


def to_markdown(res: dict) -> str:
    from tabulate import tabulate

    keys = [a["key"] for a in res["axes"]]
    body = [[show_value(p["params"][k]) for k in keys]
             + [_pm(p["val_mean"], p["val_std"]), _pm(p["test_mean"], p["test_std"]), f"{p['n']}/{p['seeds']}",
                ",".join(map(str, p["selected_epochs"])) or "-", p["status"], "**chosen**" if p["chosen"] else ""]
             for p in res["points"]]
    heads = keys + ["val top-1", "test top-1 (val-selected epoch)", "seeds done", "selected epochs", "status", ""]
    return "\n".join(header_lines(res)) + "\n\n" + tabulate(body, headers=heads, tablefmt="github") + "\n"


def to_csv(res: dict) -> str:
    import csv

    keys = [a["key"] for a in res["axes"]]
    buf = io.StringIO()
    buf.write("".join(f"# {line.lstrip('#- ').strip()}\n" for line in header_lines(res) if line.strip()))
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + ["val_top1_mean", "val_top1_std", "test_top1_mean", "test_top1_std", "n", "seeds",
                       "selected_epochs", "status", "chosen"])
    for p in res["points"]:
        w.writerow([p["params"][k] for k in keys] + [p["val_mean"], p["val_std"], p["test_mean"], p["test_std"],
                                                     p["n"], p["seeds"], " ".join(map(str, p["selected_epochs"])),
                                                     p["status"], int(p["chosen"])])
    return buf.getvalue()


def write(res: dict, out: Path) -> list[Path]:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from tfkd_cli.errors import TfkdError

        raise TfkdError(f"cannot create the sweep folder {out}: {e.strerror}") from None
    atomic_write_text(out / "sweep.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "sweep.csv", to_csv(res))
    atomic_write_text(out / "sweep.md", to_markdown(res))
    sweep_figure(res, out / "sweep.png")
    return [out / f"sweep.{ext}" for ext in ("md", "csv", "json", "png")]
