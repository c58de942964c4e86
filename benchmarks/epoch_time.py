"""Wall time of one full epoch (training + test evaluation) through the engine, old vs new.

At the mini scale's settings (recipes/scales/mini.yaml: widths, batch 32, 20 images per class
of tiny100-32, the full 5,000-image test split), each model trains one epoch with `engine.train`
in every configuration, the configurations alternating in one process (A B, B A, ...) so that
both see the same neighbours; `--repeats` rounds. The epoch time is the run's `run_time_s`
(training, evaluation, checkpoints; not data loading or model building), split into training
(`timings.csv`) and the rest (evaluation + checkpoint).

Configurations:
  old   channels_last, threads 1, runtime.fast_eval=false (the mini scale before the change)
  new   channels_last, threads 1, runtime.fast_eval=true (folded channels_last eval copy)
  with --threads 2 instead: old = channels_last off (the old engine turned it off with >1
  thread), new = channels_last with the odd-batch guard + fast_eval.

    python benchmarks/epoch_time.py --data-root /tmp/tiny100/tiny100-32 [--models resnet18,mobilenetv2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = "resnet18,mobilenetv2,shufflenetv2,resnet50,resnext29_8x64d,googlenet"


def mini_recipe(model: str, root: str, threads: int, channels_last: bool, fast_eval: bool):
    from tfkd_cli.config.recipe import Recipe

    scale = yaml.safe_load((ROOT / "recipes/scales/mini.yaml").read_text())
    ov = scale["overrides"]
    r = Recipe(model=model, width=scale.get("per_model", {}).get(model, {}).get("width", ov["width"]))
    r.data.dataset, r.data.root, r.data.per_class = ov["data"]["dataset"], root, ov["data"]["per_class"]
    r.train.batch_size, r.train.epochs = ov["train"]["batch_size"], 1
    r.runtime.device, r.runtime.threads = "cpu", threads
    r.runtime.channels_last, r.runtime.fast_eval = channels_last, fast_eval
    return r


def one_epoch(recipe) -> dict:
    from tfkd_cli.training.engine import train

    with tempfile.TemporaryDirectory() as d:
        s = train(recipe, Path(d) / "run", progress=False, log=lambda _: None)
        train_s = float((Path(d) / "run" / "timings.csv").read_text().splitlines()[1].split(",")[1])
    return {"epoch_s": s["run_time_s"], "train_s": train_s, "eval_s": s["run_time_s"] - train_s,
            "top1": s["last"]["top1"], "nll": s["last"]["nll"], "ece": s["last"]["ece"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, help="tiny100-32 (CIFAR-100 python layout)")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    import torch

    old_cl = args.threads == 1  # the old engine turned channels_last off with more than one thread
    configs = {"old": (old_cl, False), "new": (True, True)}
    print(f"# epoch time on {cpu_name()}, {torch.get_num_threads()} cores visible | torch {torch.__version__} | "
          f"mini scale (batch 32, 20/class, 5,000 test images) | threads {args.threads} | "
          f"old: channels_last={old_cl}, fast_eval off; new: channels_last + guard, fast_eval on")
    rows, t0 = {}, time.perf_counter()
    for model in args.models.split(","):
        runs = {k: [] for k in configs}
        for rep in range(args.repeats):
            order = list(configs) if rep % 2 == 0 else list(reversed(configs))
            for name in order:
                cl, fe = configs[name]
                runs[name].append(one_epoch(mini_recipe(model, args.data_root, args.threads, cl, fe)))
        ratios = [o["epoch_s"] / n["epoch_s"] for o, n in zip(runs["old"], runs["new"])]
        eval_ratios = [o["eval_s"] / n["eval_s"] for o, n in zip(runs["old"], runs["new"])]
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("epoch_s", "train_s", "eval_s")}
               for k, v in runs.items()}
        same = all(o["top1"] == n["top1"] for o, n in zip(runs["old"], runs["new"]))
        rows[model] = {"runs": runs, "ratios": ratios, "eval_ratios": eval_ratios}
        o, n = med["old"], med["new"]
        print(f"{model:16s} old {o['epoch_s']:6.2f}s (train {o['train_s']:5.2f} + eval {o['eval_s']:5.2f}) | "
              f"new {n['epoch_s']:6.2f}s (train {n['train_s']:5.2f} + eval {n['eval_s']:5.2f}) | "
              f"epoch {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
              f"eval {statistics.median(eval_ratios):.2f}x [{min(eval_ratios):.2f}-{max(eval_ratios):.2f}] | "
              f"top-1 equal: {same} | goal 1.5x {'MET' if statistics.median(ratios) >= 1.5 else 'NOT MET'}",
              flush=True)
    print(f"total wall time {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "cpu": cpu_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
