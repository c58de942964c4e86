"""The report of the throughput benchmark: the table, the loss micro-benchmark and the goals."""

from __future__ import annotations

import statistics

# tfkd / reference images/s: on a CPU both loops are conv-bound (issue #14 asks 1.2x); on a GPU the
# data pipeline, syncs and the per-sample loss loop dominate a step of milliseconds (1.5x).
SPEED_GOAL = {"cpu": 1.2, "cuda": 1.5}
REG_GOAL_PCT = 2.0  # Tf-KD_reg step time over CE, percent
LOOPS = ("tfkd", "reference")


def fmt_mem(r: dict, cuda: bool) -> str:
    if "error" in r or "rss_peak_mib" not in r:
        return "-"
    if cuda:
        return f"{r['gpu_peak_mib']:.0f}"
    s = f"{r['rss_peak_mib']:.0f} (+{r['rss_peak_mib'] - r['rss_setup_mib']:.0f})"
    if "rss_worker_peak_mib" in r:
        s += f" w{r['rss_worker_peak_mib']:.0f}"
    return s



def _ratio(a: dict, b: dict, key: str):
    return a[key] / b[key] if key in a and key in b else None


def build_rows(merged: dict, models: list[str], methods: list[str]) -> list[dict]:
    """One row per (model, method): both loops' numbers and the tfkd/reference ratios."""
    rows = []
    for model in models:
        for method in methods:
            a = merged.get((model, method, "tfkd"), {"error": "not run"})
            b = merged.get((model, method, "reference"), {"error": "not run"})
            rows.append({"model": model, "method": method, "tfkd": a, "reference": b,
                         "ratio": _ratio(a, b, "images_per_s"),
                         "ratio_median_step": _ratio(a, b, "median_images_per_s")})
    return rows


def reg_costs(merged: dict, models: list[str]) -> dict[str, dict]:
    """Tf-KD_reg cost relative to CE in the tfkd loop: extra time per image, percent."""
    reg_cost: dict[str, dict] = {}
    for model in models:
        ce, rg = merged.get((model, "ce", "tfkd"), {}), merged.get((model, "tfkd_reg", "tfkd"), {})
        for key in ("images_per_s", "median_images_per_s"):
            if key in ce and key in rg:
                reg_cost.setdefault(model, {})[key] = (ce[key] / rg[key] - 1.0) * 100.0
    return reg_cost


def print_table(rows: list[dict], cuda: bool, reference_from) -> None:
    def ips(r: dict, key: str = "images_per_s") -> str:
        return f"{r[key]:.1f}" if key in r else ("FAILED" if r.get("error") not in (None, "not run") else "-")

    def rat(x) -> str:
        return f"{x:.2f}x" if x is not None else "-"

    med = not cuda
    mem_head = "peak GPU MiB tfkd / ref" if cuda else \
        "peak RSS MiB (+ during steps) tfkd / ref (w: ref DataLoader worker)"
    print()
    print(f"| model | method | tfkd img/s | reference img/s | tfkd/ref |{' tfkd/ref (median step) |' if med else ''}"
          f" {mem_head} |")
    print(f"|---|---|---:|---:|---:|{'---:|' if med else ''}---|")
    for r in rows:
        a, b = r["tfkd"], r["reference"]
        print(f"| {r['model']} | {r['method']} | {ips(a)} | {ips(b)} | {rat(r['ratio'])} |"
              f"{' ' + rat(r['ratio_median_step']) + ' |' if med else ''} {fmt_mem(a, cuda)} / {fmt_mem(b, cuda)} |")
    if reference_from:
        print(f"(reference columns from {reference_from})")
    for r in rows:
        for loop in LOOPS:
            if r[loop].get("error") not in (None, "not run"):
                print(f"  {r['model']} {r['method']} {loop} FAILED: {r[loop]['error']}")


def print_loss_bench(lb: dict, device) -> None:
    print(f"\nloss alone, forward+backward on 128x100 logits ({device}), microseconds per call "
          "(best of 3 blocks):")
    for k, v in lb.items():
        print(f"  {k:38s} {v:9.1f}")


def goals(rows: list[dict], reg_cost: dict, merged: dict, lb: dict, device: str = "cpu") -> dict:
    """Print the goals and whether each is met; returns them for the JSON file."""
    goal = SPEED_GOAL["cuda" if device.startswith("cuda") else "cpu"]
    print("\ngoals:")
    out: dict = {"speed": {}, "reg_vs_ce": {}}
    for r in rows:
        if r["ratio"] is None:
            continue
        met = r["ratio"] >= goal
        out["speed"][f"{r['model']}/{r['method']}"] = {"ratio": r["ratio"], "met": met, "goal": goal,
                                                        "ratio_median_step": r["ratio_median_step"]}
        extra = f" (median step {r['ratio_median_step']:.2f}x)" if r["ratio_median_step"] is not None else ""
        print(f"  tfkd >= {goal}x reference   {r['model']:12s} {r['method']:9s} {r['ratio']:.2f}x{extra}"
              f"  {'MET' if met else 'NOT MET'}")
    for model, cost in reg_cost.items():
        if "images_per_s" in cost:
            out["reg_vs_ce"][model] = _reg_goal(model, cost, merged, lb)
    return out


def _reg_goal(model: str, cost: dict, merged: dict, lb: dict) -> dict:
    pct = cost["images_per_s"]
    met = pct <= REG_GOAL_PCT
    entry = {"end_to_end_pct": pct, "met": met}
    line = f"  Tf-KD_reg within {REG_GOAL_PCT:g}% of CE  {model:12s} end to end {pct:+.1f}%"
    if "median_images_per_s" in cost:
        entry["median_step_pct"] = cost["median_images_per_s"]
        line += f" (median step {cost['median_images_per_s']:+.1f}%)"
    ce = merged[(model, "ce", "tfkd")]
    a, b = ce.get("step_s", []), merged[(model, "tfkd_reg", "tfkd")].get("step_s", [])
    if len(a) == len(b) >= 3:
        # steps timed side by side in lockstep: 2 standard errors of the mean paired difference.
        # Per-process effects (core, memory placement) are not in it: on a shared CPU, same-method
        # processes differ by a few % too.
        band = 2 * statistics.stdev(y - x for x, y in zip(a, b)) / len(a) ** 0.5 / statistics.mean(a) * 100
        entry["paired_2se_pct"] = band
        line += f" +- {band:.1f}% (2 s.e., paired steps)"
    if lb:
        # the loss difference as a share of one CE step: the loss cost without step-to-step noise
        step_us = ce["seconds"] / ce["steps"] * 1e6
        loss_pct = (lb["tfkd_reg (tfkd build_loss)"] - lb["ce (tfkd build_loss)"]) / step_us * 100.0
        entry["loss_only_pct"] = loss_pct
        line += f"; loss alone {loss_pct:+.2f}% of a CE step"
    line += f"  {'MET' if met else 'NOT MET'}"
    print(line)
    return entry
