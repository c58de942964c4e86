#!/usr/bin/env python
"""Cost of the loss-term diagnostics per training step, against a CE training step (issue #17).

One run measures, at batch 128 and K = 100 (CIFAR-100 shape, 3x32x32 inputs):

* a CE training step of the CIFAR ResNet18 at each --widths (forward + CE + backward + SGD
  step with momentum and weight decay, the step the engine runs), median of --steps timed
  steps after --warmup;
* the diagnostics of one batch for every method (tfkd_cli.diagnostics.term_norms on the
  step's 128 x 100 logits, plus EpochDiagnostics.add), median of --reps calls;
* the ratio diagnostics / CE step, against the target < 2%.

The inputs are random: neither cost depends on the pixel values. On CUDA every timing is
bracketed by torch.cuda.synchronize(), so the diagnostics' kernel launches are counted in full.
On the CPU the clock is the thread's CPU time (time.thread_time) and --threads defaults to 1:
on a shared machine wall time mostly measures the neighbours (a 200 us call read 7 ms).

    PYTHONPATH=. python benchmarks/diagnostics_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tfkd_cli.diagnostics import EpochDiagnostics, term_norms
from tfkd_cli.models import build_model

N, K = 128, 100
METHODS = [
    ("ce", {}),
    ("ce", {"label_weight": 0.05}),
    ("kd", dict(alpha=0.95, temperature=20.0)),
    ("kd", dict(alpha=0.95, temperature=20.0, uniform_teacher=True)),
    ("kd_self", dict(alpha=0.95, temperature=6.0, multiplier=50.0)),
    ("tfkd_reg", dict(alpha=0.95, temperature=40.0)),
    ("tfkd_reg", dict(alpha=0.95, temperature=40.0, semantics="paper")),
    ("lsr", dict(epsilon=0.1)),
]


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device: torch.device):
    """CPU: this thread's CPU time (with one torch thread every op runs on it, and time spent
    preempted by other processes on a shared machine is not counted); CUDA: wall time."""
    return time.thread_time if device.type == "cpu" else time.perf_counter


def _timed(fn, device: torch.device) -> float:
    clock = _clock(device)
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def ce_step_s(width: float, args, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_model("resnet18", K, width).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
    x = torch.randn(N, 3, 32, 32, device=device)
    y = torch.randint(0, K, (N,), device=device)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    return statistics.median(_timed(step, device) for _ in range(args.steps))


def diag_s(method: str, params: dict, args, device: torch.device) -> float:
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(N, K, generator=g) * 5).to(device).requires_grad_(True)  # as the step's logits
    t = (torch.randn(N, K, generator=g) * 5).to(device)
    y = torch.randint(0, K, (N,), generator=g).to(device)
    acc = EpochDiagnostics()

    def call():
        acc.add(term_norms(method, z, y, t, **params))

    for _ in range(10):
        call()
    # time blocks of 10 calls: a single call (tens of microseconds) is close to the timer's noise
    return statistics.median(_timed(lambda: [call() for _ in range(10)], device) / 10 for _ in range(args.reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="0.25,1.0")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    clock = "thread CPU time" if device.type == "cpu" else "wall time"
    print(f"# diagnostics cost on {hw} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads) | "
          f"{device} | torch {torch.__version__} | batch {N}, K {K} | clock: {clock}")
    t0 = time.time()
    diag = {}
    for method, params in METHODS:
        label = method + "".join(f" {k}={v}" for k, v in params.items())
        diag[label] = diag_s(method, params, args, device)
    worst = max(diag.values())
    print("\ndiagnostics per batch (term_norms + EpochDiagnostics.add), microseconds, median of "
          f"{args.reps} blocks of 10 calls:")
    for label, s in diag.items():
        print(f"  {label:48s} {s * 1e6:9.1f}")
    print(f"\nCE training step of resnet18 (median of {args.steps} after {args.warmup} warm-up), "
          "and the most expensive diagnostics as a share of it (target < 2%):")
    for w in (float(v) for v in args.widths.split(",")):
        step = ce_step_s(w, args, device)
        ratio = worst / step
        print(f"  width {w:<5g} step {step * 1e3:9.2f} ms   diagnostics {worst * 1e6:7.1f} us = "
              f"{100 * ratio:.3f}% of a step  {'MET' if ratio < 0.02 else 'NOT MET'}")
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
