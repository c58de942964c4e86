"""One run per core with one thread each, against one run at a time with every core: which
placement finishes a table's runs sooner, quiet and beside a competing process?

Two torch threads on two cores stall whenever the scheduler takes one of them away (an
OpenMP barrier waits for the slowest thread), so a busy neighbour can halve a two-thread run,
while two one-thread runs each lose only their own share. This measures it on real runs:

    python3 benchmarks/threads.py                 # 2 digits runs (resnet18 x0.125, 3 epochs) per placement
    python3 benchmarks/threads.py --runs 4 --epochs 5

For each condition (quiet; beside one busy-loop process) it trains the same `--runs` runs
(different seeds) as (a) `--runs` processes at once, `cores` at a time, one thread each, and
(b) one process after another with `cores` threads each, and prints the wall time of each
placement and their ratio. Compare only figures from one invocation (one machine, one load).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import cpu_model  # the benchmarks' one reading of the CPU name


def _train(out: Path, seed: int, threads: int, epochs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tfkd_cli", "train-teacher", "--dataset", "digits", "--model", "resnet18",
           "--width", "0.125", "--epochs", str(epochs), "--seed", str(seed), "--out", str(out / f"s{seed}_t{threads}"),
           "--set", f"runtime.threads={threads}", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a benchmark run failed: {err.strip().splitlines()[-1:]}")


def per_core(out: Path, runs: int, cores: int, epochs: int) -> float:
    """`runs` one-thread processes, `cores` at a time; wall seconds."""
    t0, pending, active = time.perf_counter(), list(range(runs)), []
    while pending or active:
        while pending and len(active) < cores:
            active.append(_train(out, pending.pop(0), 1, epochs))
        _wait([active.pop(0)])
    return time.perf_counter() - t0


def all_cores(out: Path, runs: int, cores: int, epochs: int) -> float:
    """The same runs one after another, `cores` threads each; wall seconds."""
    t0 = time.perf_counter()
    for seed in range(runs):
        _wait([_train(out, seed, cores, epochs)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before: "
          f"{os.getloadavg()[0]:.2f}; {a.runs} digits runs (resnet18 x0.125, {a.epochs} epochs)")
    rows = []
    for condition in ("quiet", "beside one busy-loop process"):
        busy = None
        if condition != "quiet":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            with tempfile.TemporaryDirectory() as d:
                a_s = per_core(Path(d) / "a", a.runs, a.cores, a.epochs)
                b_s = all_cores(Path(d) / "b", a.runs, a.cores, a.epochs)
        finally:
            if busy:
                busy.kill()
        rows.append((condition, a_s, b_s))
    print(f"{'condition':32s} {'1 thread x ' + str(a.cores) + ' runs at once':>26s} "
          f"{str(a.cores) + ' threads, one run at a time':>28s}  ratio (all-cores / per-core)")
    for cond, a_s, b_s in rows:
        print(f"{cond:32s} {a_s:24.1f} s {b_s:26.1f} s  {b_s / a_s:6.2f}x")


if __name__ == "__main__":
    main()
