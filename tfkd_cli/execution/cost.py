"""Rough time estimates for `reproduce --dry-run`.

CPU: small models are dominated by per-layer overhead, not FLOPs (at an eighth of the width
ResNet18 has 1/64 of the FLOPs but costs a third of the time per image), so a FLOP rate is
wrong by 2-5x at the mini scale. Instead each model has per-image times measured with
tfkd's training step and evaluation forward at several widths (2-core AMD EPYC VM, torch
2.14.1, 1 thread, channels_last, batch 128); the estimate interpolates them linearly in
forward FLOPs and extrapolates along the nearest segment. Models without measurements fall
back to a fixed overhead plus FLOPs / a typical rate.
CUDA: FLOPs / achieved rate measured on one H100 with bf16 autocast (benchmarks/README.md).
The teacher-logit cache is not modelled: a teacher's forward is counted for every student,
so runs that share a teacher cost less than estimated.

These per-image figures were taken at batch 128 on a quiet machine; real runs (batch 32, two
runs side by side, start-up, data loading) take 2-3x longer. So `Calibration` scales each
estimate by the measured / estimated ratio of the finished runs whose records are committed
(results/*/*/runs/*: recipe.yaml and summary.json's run_time_s): the median over records of the
same model, dataset and kind (with or without a teacher network), else of the same model and
dataset, else of the same model, else of all records. `wall_seconds` then places
the runs on `jobs` workers in plan order, a student after its teacher, as the local runner does.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Iterable, Optional

import torch

from tfkd_cli.data.registry import DATASETS
from tfkd_cli.methods import METHODS
from tfkd_cli.models import build_model, canonical_name
from tfkd_cli.config.recipe import Recipe

# model -> [(width, train-step ms per image, eval-forward ms per image)], measured on the CPU.
CPU_MS = {
    "resnet18": [(0.0625, 0.426, 0.092), (0.125, 0.579, 0.156), (0.25, 1.542, 0.514)],
    "mobilenetv2": [(0.0625, 0.556, 0.086), (0.125, 0.703, 0.108), (0.25, 1.180, 0.277)],
    "shufflenetv2": [(0.125, 0.637, 0.110), (0.25, 0.946, 0.158)],
    "resnet50": [(0.0625, 1.057, 0.231), (0.125, 1.897, 0.702)],
    "resnext29_8x64d": [(0.0625, 3.737, 0.961), (0.125, 9.117, 2.841)],
    "googlenet": [(0.0625, 2.355, 0.605), (0.125, 3.775, 1.003)],
}
# The eval-forward times above are of the model itself. runtime.fast_eval (the default) evaluates a
# conv-BN folded channels_last copy instead: measured evaluation speed-up per model at the mini
# scale's widths, 1 thread (benchmarks/epoch_time.py --threads 1, quiet AMD EPYC, 2026-12-02).
CPU_FAST_EVAL_GAIN = {"resnet18": 1.27, "mobilenetv2": 1.41, "shufflenetv2": 1.02, "resnet50": 1.50,
                      "resnext29_8x64d": 1.21, "googlenet": 1.13}
CPU_DEFAULT = {"train": (0.5e-3, 50e9), "infer": (0.1e-3, 150e9)}  # overhead s/image, FLOP/s
# Achieved FLOP/s of a training step (counted as 3x forward) and of a forward, on CUDA.
CUDA_RATES = {"train": 60_000e9, "infer": 150_000e9}



@functools.lru_cache(maxsize=None)
def forward_flops(model: str, width: float, num_classes: int, side: int) -> float:
    """FLOPs of one forward pass of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = build_model(model, num_classes=num_classes, width=width)
    with FlopCounterMode(display=False) as fc:
        net(torch.empty(1, 3, side, side, device="meta"))
    return float(fc.get_total_flops())


def _seconds_per_image(device: str, kind: str, model: str, width: float, classes: int, side: int) -> float:
    """Seconds per image of a training step (kind "train") or an inference forward ("infer")."""
    f = forward_flops(model, width, classes, side)
    if device.startswith("cuda"):
        return (3 * f if kind == "train" else f) / CUDA_RATES[kind]
    points = CPU_MS.get(canonical_name(model))
    if not points or side != 32:
        overhead, rate = CPU_DEFAULT[kind]
        return overhead + (3 * f if kind == "train" else f) / rate
    col = 1 if kind == "train" else 2
    xy = sorted((forward_flops(model, p[0], 100, 32), p[col] / 1e3) for p in points)
    if len(xy) == 1:
        return xy[0][1] * f / xy[0][0]
    # the segment containing f, or the nearest end segment to extrapolate along
    i = min(max(sum(x <= f for x, _ in xy) - 1, 0), len(xy) - 2)
    (x0, y0), (x1, y1) = xy[i], xy[i + 1]
    return max(y0 + (y1 - y0) * (f - x0) / (x1 - x0), 0.2 * y0)


def estimate_seconds(r: Recipe, device: str = "cpu", teacher: Optional[Recipe] = None) -> float:
    """Estimated wall time of a whole run of recipe `r` (with its teacher run's recipe) on `device`."""
    info = DATASETS.get(r.data.dataset)  # sizes from the dataset registry; CIFAR-100's if unknown
    n_train, n_test, side = (info.num_train, info.num_test, info.image_size) if info else (50_000, 10_000, 32)
    classes = (info.num_classes if info else None) or 100
    if r.data.per_class:
        n_train = r.data.per_class * classes
    test_s = n_test * _seconds_per_image(device, "infer", r.model, r.width, classes, side)
    if r.runtime.fast_eval and not device.startswith("cuda"):
        test_s /= CPU_FAST_EVAL_GAIN.get(canonical_name(r.model), 1.0)
    per_epoch = n_train * _seconds_per_image(device, "train", r.model, r.width, classes, side) + test_s
    if r.teacher.path and METHODS[r.method].needs_teacher:
        tm = r.teacher.model or (teacher.model if teacher else r.model)
        tw = r.teacher.width or (teacher.width if teacher else r.width)
        per_epoch += n_train * _seconds_per_image(device, "infer", tm, tw, classes, side)
    return per_epoch * r.train.epochs


def taught(r: Recipe) -> bool:
    """Whether a run reads a teacher network: its estimate counts the teacher's forward for every
    batch, which the teacher-logit cache shares between students, so such runs get their own ratio."""
    return bool(r.teacher.path) and METHODS[r.method].needs_teacher and not r.teacher.uniform


class Calibration:
    """Measured / estimated run-time ratios of committed run records (module doc)."""

    def __init__(self, ratios: dict[tuple[str, str, bool], list[float]]):
        self.ratios = ratios
        self.records = sum(len(v) for v in ratios.values())

    @classmethod
    def from_records(cls, summaries: Iterable[Path]) -> "Calibration":
        ratios: dict[tuple[str, str, bool], list[float]] = {}
        for s, r in cpu_records(summaries):
            if not s.get("run_time_s"):
                continue
            t = s.get("teacher") or {}
            try:
                teacher = Recipe(model=t["model"], width=t.get("width") or 1.0) if t.get("model") else None
                est = estimate_seconds(r, "cpu", teacher)
            except Exception:  # a model this code lacks: not a timing
                continue
            if est > 0:
                key = (canonical_name(r.model), r.data.dataset, taught(r))
                ratios.setdefault(key, []).append(s["run_time_s"] / est)
        return cls(ratios)

    def ratio(self, r: Recipe) -> tuple[float, str]:
        """The factor for recipe `r`'s estimate, and what it was measured on."""
        model = canonical_name(r.model)
        for label, keep in (("model, dataset and teacher", lambda k: k == (model, r.data.dataset, taught(r))),
                            ("model and dataset", lambda k: k[:2] == (model, r.data.dataset)),
                            ("model", lambda k: k[0] == model), ("all", lambda k: True)):
            vals = [v for k, vs in self.ratios.items() if keep(k) for v in vs]
            if vals:
                return statistics.median(vals), label
        return 1.0, "none"


def cpu_records(summaries: Iterable[Path]) -> list[tuple[dict, Recipe]]:
    """(summary.json, recipe) of each record of a CPU run; records older code cannot read are skipped."""
    from tfkd_cli.config.recipe import from_dict, read_yaml

    out = []
    for f in summaries:
        try:
            s = json.loads(f.read_text())
            r = from_dict(read_yaml(f.parent / "recipe.yaml"), str(f.parent))
        except Exception:  # a record from older code, or of a model this code lacks: not a timing
            continue
        if s.get("device") == "cpu":
            out.append((s, r))
    return out


def committed_records(root: Path = Path("results")) -> list[Path]:
    """Every committed run record's summary.json under `root` (results/<table>/<scale>/runs/*)."""
    return sorted(root.glob("*/*/runs/*/summary.json"))


def wall_seconds(runs: list[tuple[str, float, list[str]]], jobs: int) -> float:
    """Wall time of (name, seconds, names it needs) on `jobs` workers: a free worker takes the
    first run in list order whose teachers are done, as the local runner does (module doc)."""
    free = [0.0] * max(1, jobs)
    done: dict[str, float] = {}  # name -> when it finishes
    pending = list(runs)
    while pending:
        i = min(range(len(free)), key=free.__getitem__)
        # each run whose teachers are placed, with the time they are all done
        cands = [(max([done[n] for n in needs], default=0.0), k)
                 for k, (_, _, needs) in enumerate(pending) if all(n in done for n in needs)]
        now = [k for t, k in cands if t <= free[i]]
        k, start = (now[0], free[i]) if now else (min(cands)[1], min(cands)[0])
        name, secs, _ = pending.pop(k)
        free[i] = done[name] = start + secs
    return max(free)
