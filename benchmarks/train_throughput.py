#!/usr/bin/env python
"""Training throughput: tfkd's loop vs a loop written the way the official Tf-KD code works.

One run measures images/s of FULL training steps (data + augmentation + forward + loss +
backward + SGD step) at batch 128 on tiny100-32 (dataset `cifar-layout`) for every
(model, method, loop):

  models   resnet18, mobilenetv2 (--models), at --width (1.0 = the official models)
  methods  ce, kd (a resnet18 teacher of the student's width), tfkd_reg (--methods)
  loops    tfkd       the engine itself: `build.build_run(recipe)` builds data (in-memory, vectorised
                      augmentation), teacher (loaded from a tfkd checkpoint, eval mode, inference
                      mode), student, SGD(foreach=True) and loss exactly as `tfkd train` does, and
                      each step is the engine's `loop.fit_step` (lr, autocast, step, device-side
                      loss/accuracy sums) plus its NaN check, which syncs every step on CPU and
                      every 50 on CUDA (progress bar off, as with --quiet).
           reference  the official main.py / train_kd.py / my_loss_function.py way: torchvision PIL
                      transforms (tfkd_cli.data.reference) in DataLoader(num_workers=2, shuffle=True)
                      over ReferenceDataset, blocking .to(device) (the official `.cuda()`), fp32,
                      channels-first, eager, SGD with torch's default implementation choice, the
                      teacher in eval mode WITHOUT no_grad and with trainable parameters, its output
                      wrapped in Variable(requires_grad=False), nn.KLDivLoss() (reduction 'mean'),
                      the Tf-KD_reg target built by a per-sample Python loop, and the per-step
                      `.item()` syncs of the official accuracy / loss meters.
  --amp / --compile / --channels-last apply to the tfkd loop only; the reference is always the
  official fp32 eager channels-first loop.

Method (noise): every (model, method, loop) runs in its own worker process (so its peak memory is
its own). The workers of a lockstep group (--group; default: {ce, tfkd_reg} x {tfkd, reference}
of a model, then {kd} x {tfkd, reference}) are set up together and warmed up one after the other,
then run in LOCKSTEP: the parent gives them turns of --block timed steps, the order reversed every
round (A B C D, D C B A, ...), so they all see the same neighbours on a shared machine. Warm-up
steps are excluded; each worker runs --steps timed steps. On the CPU both loops sync every step
anyway, so every step is timed: the median step is reported beside the mean, and Tf-KD_reg vs CE
gets a 2-standard-error band from the paired (side by side) steps. A worker waiting for its turn
is idle, except the reference's DataLoader workers, which keep prefetching (<= 2 x num_workers
batches): that moves a little of the reference's data work out of its own timed steps, i.e. it
favours the reference. With --rewarm N each turn starts with N untimed steps, which drains that
head start (default 4 = the prefetch depth, used on CUDA where turns are long; on the CPU a PIL
batch costs ~1% of a step and the default is 0).

Memory: CPU: resource.getrusage max RSS of the worker ("+" = growth during warm-up and the timed
steps), and for the reference the largest DataLoader worker's max RSS ("w"); CUDA:
torch.cuda.max_memory_allocated over warm-up and timed steps.

A loss micro-benchmark (forward+backward of the loss alone: CE vs Tf-KD_reg, tfkd vs the official
per-sample loop) isolates the loss cost from step-to-step noise.

Data: --data-root (or $TFKD_BENCH_DATA; default ../shared/data beside the repository) is a folder
holding tiny100-32's train/test/meta, or its `tiny100-32/` folder, or `tiny100-32.tar.gz` (then
extracted once into the temp directory, outside the repository).

Parts: _harness.py (worker processes, lockstep turns), _official.py (the official loop, its losses
and the loss micro-benchmark), _report.py (the table and the goals).

Goals reported against: tfkd >= 1.5x the reference end to end per model and method, and
Tf-KD_reg within 2% of CE (tfkd loop).
"""

from __future__ import annotations


from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _harness import cpu_model, lockstep_groups, run_lockstep, run_worker
from _official import loss_bench, loss_config, setup_reference
import _report

MODELS = ("resnet18", "mobilenetv2")
METHODS = ("ce", "kd", "tfkd_reg")
LOOPS = _report.LOOPS
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"  # the project's ../shared/data
TARBALL = "tiny100-32.tar.gz"


# --------------------------------------------------------------------------- data root


def find_root(root: str) -> Path | None:
    """The folder holding train/test/meta: `root`, `root/tiny100-32`, or `root`'s tarball extracted."""
    p = Path(root).expanduser()
    for cand in (p, p / "tiny100-32"):
        if all((cand / f).is_file() for f in ("train", "test", "meta")):
            return cand.resolve()
    tar = p if p.is_file() else p / TARBALL
    if not tar.is_file():
        return None
    dest = Path(tempfile.gettempdir()) / "tfkd-bench-data"
    if not (dest / "tiny100-32").is_dir():
        print(f"extracting {tar} into {dest} (once)", file=sys.stderr, flush=True)
        dest.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(dir=dest))  # renamed into place when complete
        with tarfile.open(tar) as t:
            t.extractall(part, filter="data")
        (part / "tiny100-32").rename(dest / "tiny100-32")
        part.rmdir()
    cand = dest / "tiny100-32"
    return cand.resolve() if all((cand / f).is_file() for f in ("train", "test", "meta")) else None


def missing_root_message(root: str) -> str:
    return (f"tiny100-32 not found: {root} has no train/test/meta files and no {TARBALL}.\n"
            f"Point --data-root (or $TFKD_BENCH_DATA) at the folder holding {TARBALL} or the files\n"
            f"extracted from it, outside the repository, e.g.\n"
            f"    python benchmarks/train_throughput.py --data-root ../shared/data\n"
            f"(the tarball unpacks to tiny100-32/{{train,test,meta}}, the CIFAR-100 python layout)")


# --------------------------------------------------------------------------- the tfkd loop


def _random_teacher(spec: dict, folder: Path) -> Path:
    """A random-init resnet18 tfkd checkpoint: the same cost as a trained teacher."""
    import torch

    from tfkd_cli.storage import checkpoint as ckpt_io
    from tfkd_cli.data.registry import read_split
    from tfkd_cli.models import build_model

    classes = len(read_split("cifar-layout", spec["root"], "test")[2])
    net = build_model("resnet18", num_classes=classes, width=spec["width"])
    f = folder / "teacher.pt"
    torch.save({"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "epoch": 0, "model": net.state_dict(),
                "arch": {"model": "resnet18", "num_classes": classes, "width": spec["width"]}}, f)
    return f


def setup_tfkd(spec: dict):
    """The engine's loop: returns (device, step_fn, batch iterator, finish)."""
    from tfkd_cli.training.build import build_run
    from tfkd_cli.training.loop import fit_step
    from tfkd_cli.training.state import EpochSums
    from tfkd_cli.config.recipe import LossCfg, Recipe
    from tfkd_cli.training.runtime import Dist, select_device, wrap
    from tfkd_cli.training.state import State

    device = select_device(spec["device"])
    recipe = Recipe(model=spec["model"], width=spec["width"], method=spec["method"], seed=0,
                    loss=LossCfg(**loss_config(spec["model"], spec["method"])))
    recipe.data.dataset, recipe.data.root = "cifar-layout", spec["root"]
    recipe.train.batch_size = spec["batch_size"]
    recipe.runtime.amp, recipe.runtime.compile = spec["amp"], spec["compile"]
    recipe.runtime.channels_last = spec["channels_last"]
    tmp = tempfile.TemporaryDirectory()
    if recipe.method == "kd":
        recipe.teacher.path = str(_random_teacher(spec, Path(tmp.name)))
    run = build_run(recipe, device, log=lambda m: print(m, file=sys.stderr))
    fwd = wrap(run.model, Dist(), device, recipe.runtime.compile)
    run.model.train()
    sums = EpochSums(State().acc, Dist(), device)

    def stream():
        epoch = 1
        while True:
            for step, (x, y) in enumerate(run.data.train_batches(epoch, recipe.seed)):
                yield epoch, step, x, y
            epoch += 1

    def step_fn(epoch, step, x, y) -> int:
        fit_step(recipe, run, fwd, sums, epoch, step, x, y)
        if sums.check_due(step) and sums.first_bad() >= 0:
            raise RuntimeError(f"non-finite loss at step {step}")
        return y.shape[0]

    def finish() -> dict:
        tmp.cleanup()
        return {}

    return device, step_fn, stream(), finish


# --------------------------------------------------------------------------- parent side


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("TFKD_BENCH_DATA", str(DEFAULT_DATA)),
                    help="folder with tiny100-32's train/test/meta, its tiny100-32/ folder or tiny100-32.tar.gz "
                         "(default $TFKD_BENCH_DATA, else ../shared/data beside the repository)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: resnet18,mobilenetv2)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of ce,kd,tfkd_reg")
    ap.add_argument("--loops", default=",".join(LOOPS), help="tfkd,reference (default both)")
    ap.add_argument("--width", type=float, default=1.0, help="channel width of student and teacher (1.0 = official)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 10 on CPU, 48 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on CPU, 16 on CUDA)")
    ap.add_argument("--block", type=int, default=None,
                    help="timed steps per lockstep turn (default 1 on CPU, 24 on CUDA)")
    ap.add_argument("--rewarm", type=int, default=None,
                    help="untimed steps at the start of every turn (default 0 on CPU, 4 on CUDA)")
    ap.add_argument("--group", choices=("reg", "pair", "model"), default="reg",
                    help="what runs in lockstep: reg = ce+tfkd_reg of a model together, other methods as "
                         "tfkd/reference pairs (default); pair = every method alone; model = all methods of a "
                         "model (2 x methods worker processes at once: memory!)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast in the tfkd loop (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the student in the tfkd loop")
    ap.add_argument("--channels-last", action="store_true", help="channels_last in the tfkd loop")
    ap.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker process (0: torch default)")
    ap.add_argument("--loss-reps", type=int, default=200, help="calls per block in the loss micro-benchmark (0: skip)")
    ap.add_argument("--worker-timeout", type=int, default=900, help="seconds to wait for any one worker reply")
    ap.add_argument("--json", dest="json_out", default=None, help="write all numbers to this JSON file")
    ap.add_argument("--reference-from", default=None, metavar="JSON",
                    help="take the reference loop's numbers from an earlier --json of this script on the same "
                         "machine (use with --loops tfkd, e.g. for --amp --compile runs)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return ap


def _lists(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list, list, list]:
    """--models, --methods, --loops as lists, checked."""
    split = lambda s: [m.strip() for m in s.split(",") if m.strip()]  # noqa: E731
    models, methods, loops = split(args.models), split(args.methods), split(args.loops)
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for lp in loops:
        if lp not in LOOPS:
            ap.error(f"unknown loop {lp!r}; choose from {', '.join(LOOPS)}")
    for name in ("steps", "block"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    return models, methods, loops


def _counts(args: argparse.Namespace, cuda: bool) -> dict:
    """Steps, warm-up, block and rewarm: the defaults differ between CPU and CUDA."""
    pick = lambda v, gpu, cpu: v if v is not None else (gpu if cuda else cpu)  # noqa: E731
    return {"steps": pick(args.steps, 48, 10), "warmup": pick(args.warmup, 16, 2),
            "block": pick(args.block, 24, 1), "rewarm": pick(args.rewarm, 4, 0)}


def _previous_reference(path: str, hw: str, args: argparse.Namespace) -> dict[tuple, dict]:
    """The reference loop's numbers from an earlier --json (--reference-from)."""
    prev = json.loads(Path(path).read_text())
    pm = prev["meta"]
    if pm["hardware"] != hw or pm["width"] != args.width or pm["batch_size"] != args.batch_size:
        print(f"warning: {path} was measured on {pm['hardware']} at width {pm['width']}, "
              f"batch {pm['batch_size']}", file=sys.stderr)
    found = {(r["model"], r["method"], "reference"): r["reference"] for r in prev.get("rows", [])}
    if not found:  # a run stopped early leaves its partial "results" only
        found = {tuple(k.split("/")): v for k, v in prev.get("results", {}).items() if k.endswith("/reference")}
    return {k: {**v, "from": path} for k, v in found.items() if "images_per_s" in v}


def _measure(args, models, methods, loops, root: Path, n: dict, prev_ref: dict, save_json) -> dict:
    """Every lockstep group in turn; (model, method, loop) -> its numbers."""
    merged: dict[tuple, dict] = {}
    for gi, (model, group) in enumerate(lockstep_groups(models, methods, args.group)):
        pairs = [(me, lp) for me in group for lp in (loops if gi % 2 == 0 else loops[::-1])]
        print(f"  {model}: " + ", ".join(f"{me}/{lp}" for me, lp in pairs) + " in lockstep", flush=True)
        specs = [{"loop": lp, "model": model, "method": me, "width": args.width, "root": str(root),
                  "device": args.device, "batch_size": args.batch_size, "warmup": n["warmup"], "amp": args.amp,
                  "compile": args.compile, "channels_last": args.channels_last,
                  "ref_workers": args.ref_workers, "threads": args.threads} for me, lp in pairs]
        res = run_lockstep(specs, n["steps"], n["block"], n["rewarm"], args.worker_timeout,
                           lambda m: print(m, flush=True))
        for spec, r in zip(specs, res):
            merged[(model, spec["method"], spec["loop"])] = r
        for spec, r in zip(specs, res):
            me = spec["method"]
            ref = merged.get((model, me, "reference")) or prev_ref.get((model, me, "reference"), {})
            msg = r["error"] if "error" in r else f"{r['images_per_s']:.1f} img/s over {r['steps']} steps"
            if spec["loop"] == "tfkd" and "images_per_s" in r and "images_per_s" in ref:
                msg += f" = {r['images_per_s'] / ref['images_per_s']:.2f}x the reference"
            print(f"    {me:9s} {spec['loop']:9s} {msg}", flush=True)
        # a run stopped by a timeout still leaves what it measured
        save_json(True, {"results": {"/".join(k): v for k, v in merged.items()}})
    for key, r in prev_ref.items():
        merged.setdefault(key, r)
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args._worker is not None:
        spec = json.loads(args._worker)
        run_worker(spec, setup_tfkd if spec["loop"] == "tfkd" else setup_reference)
        return 0
    # a terminated parent still stops its workers (the finally in run_lockstep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = find_root(args.data_root)
    if root is None:
        print(missing_root_message(args.data_root), file=sys.stderr)
        return 2
    models, methods, loops = _lists(ap, args)

    from tfkd_cli.errors import TfkdError
    from tfkd_cli.models import canonical_name
    from tfkd_cli.training.runtime import select_device

    try:
        device = select_device(args.device)
        models = [canonical_name(m) for m in models]
    except TfkdError as e:
        print(f"train_throughput: {e}", file=sys.stderr)
        return 2
    n = _counts(args, device.type == "cuda")
    meta = _header(args, device, n, root)

    def save_json(partial: bool, extra: dict) -> None:
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps({"meta": meta, "partial": partial, **extra}, indent=2) + "\n")

    t_start = time.perf_counter()
    prev_ref = {}
    if args.reference_from:
        meta["reference_from"] = args.reference_from
        prev_ref = _previous_reference(args.reference_from, meta["hardware"], args)
    merged = _measure(args, models, methods, loops, root, n, prev_ref, save_json)
    blob = _report_all(args, merged, models, methods, device)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f}s")
    if args.json_out:
        save_json(False, blob)
        print(f"wrote {args.json_out}")
    return 1 if any("error" in v for v in merged.values()) else 0


def _header(args: argparse.Namespace, device, n: dict, root: Path) -> dict:
    """Print what is measured where; returns it as the JSON file's meta."""
    import torch

    cuda = device.type == "cuda"
    hw = torch.cuda.get_device_name(device) if cuda else f"{cpu_model()}, {os.cpu_count()} cores"
    flags = " ".join(f"--{f.replace('_', '-')}" for f in ("amp", "compile", "channels_last") if getattr(args, f))
    rewarm = f" (+{n['rewarm']} untimed)" if n["rewarm"] else ""
    print(f"# train throughput on {hw} | torch {torch.__version__} | {device} | width {args.width:g} | "
          f"batch {args.batch_size} | {n['warmup']} warm-up + {n['steps']} timed steps, lockstep turns of "
          f"{n['block']}{rewarm} | tfkd loop: {flags or 'fp32 eager'}", flush=True)
    return {"device": str(device), "hardware": hw, "torch": torch.__version__, "python": platform.python_version(),
            "width": args.width, "batch_size": args.batch_size, **n, "group": args.group, "amp": args.amp,
            "compile": args.compile, "channels_last": args.channels_last, "ref_workers": args.ref_workers,
            "data_root": str(root), "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}


def _report_all(args: argparse.Namespace, merged: dict, models: list, methods: list, device) -> dict:
    """The table, the loss micro-benchmark and the goals; returns them for the JSON file."""
    import torch

    rows = _report.build_rows(merged, models, methods)
    reg_cost = _report.reg_costs(merged, models)
    _report.print_table(rows, device.type == "cuda", args.reference_from)
    lb: dict = {}
    if args.loss_reps > 0:
        if args.threads:
            torch.set_num_threads(args.threads)
        lb = loss_bench(args.device, args.loss_reps)
        _report.print_loss_bench(lb, device)
    goals = _report.goals(rows, reg_cost, merged, lb, device.type)
    return {"rows": rows, "reg_cost_pct": reg_cost, "loss_bench_us": lb, "goals": goals}

if __name__ == "__main__":
    sys.exit(main())
