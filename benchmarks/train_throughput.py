#!/usr/bin/env python
"""Training throughput: tfkd's loop vs a loop written the way the official Tf-KD code works.

One run measures images/s of FULL training steps (data + augmentation + forward + loss +
backward + SGD step) at batch 128 on tiny100-32 (dataset `cifar-layout`) for every
(model, method, loop):

  models   resnet18, mobilenetv2 (--models), at --width (1.0 = the official models)
  methods  ce, kd (a resnet18 teacher of the student's width), tfkd_reg (--methods)
  loops    tfkd       build_data(...).train_batches (in-memory, vectorised augmentation) + model +
                      build_loss + SGD(foreach=True) + the teacher in eval mode under inference_mode.
                      Each step is the engine's own `engine.train_step` (lr, autocast,
                      inference-mode teacher, loss, backward, SGD step) plus the engine's per-step
                      bookkeeping (device-side loss/accuracy sums, the NaN check that syncs every
                      step on CPU and every 50 on CUDA; progress bar off, as with --quiet).
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

Data: extract the tarball outside the repository, e.g.
    mkdir -p /tmp/tiny100 && tar xzf /work/shared/data/tiny100-32.tar.gz -C /tmp/tiny100
    python benchmarks/train_throughput.py --data-root /tmp/tiny100/tiny100-32

Goals reported against: tfkd >= 1.5x the reference end to end per model and method, and
Tf-KD_reg within 2% of CE (tfkd loop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODELS = ("resnet18", "mobilenetv2")
METHODS = ("ce", "kd", "tfkd_reg")
LOOPS = ("tfkd", "reference")
TAG = "@@"
DEFAULT_ROOT = "/tmp/tiny100/tiny100-32"
TARBALL = "/work/shared/data/tiny100-32.tar.gz"
SPEED_GOAL = 1.5  # tfkd / reference images/s
REG_GOAL_PCT = 2.0  # Tf-KD_reg step time over CE, percent


def loss_config(model: str, method: str) -> dict:
    """Loss parameters per student: the shipped configs (tables.md §2.4). Speed does not depend on them.

    Tf-KD_reg: base_resnet18 (reg_alpha 0.1, T 20, x100), base_mobilenetv2 (0.95, T 40, x1).
    KD: mobilenet_distill/resnet18_teacher (alpha 0.95, T 20), used for both students.
    """
    if method == "tfkd_reg":
        return {"alpha": 0.1, "temperature": 20.0, "multiplier": 100.0} if model == "resnet18" \
            else {"alpha": 0.95, "temperature": 40.0, "multiplier": 1.0}
    if method == "kd":
        return {"alpha": 0.95, "temperature": 20.0, "multiplier": 1.0}
    return {}


# --------------------------------------------------------------------------- data root


def find_root(root: str) -> Path | None:
    """The folder holding train/test/meta: `root` itself or `root/tiny100-32`."""
    p = Path(root).expanduser()
    for cand in (p, p / "tiny100-32"):
        if all((cand / f).is_file() for f in ("train", "test", "meta")):
            return cand.resolve()
    return None


def missing_root_message(root: str) -> str:
    return (f"tiny100-32 not found: {root} has no train/test/meta files.\n"
            f"Extract it OUTSIDE the repository, then point --data-root at it:\n"
            f"    mkdir -p /tmp/tiny100 && tar xzf {TARBALL} -C /tmp/tiny100\n"
            f"    python benchmarks/train_throughput.py --data-root /tmp/tiny100/tiny100-32\n"
            f"(the tarball unpacks to tiny100-32/{{train,test,meta}}, the CIFAR-100 python layout)")


# --------------------------------------------------------------------------- worker side


def _max_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup_tfkd(spec: dict):
    """tfkd's loop: returns (device, step_fn, batch iterator, finish)."""
    import torch

    from tfkd_cli.data import build_data
    from tfkd_cli.engine import _autocast, _loss_params, lr_at, seed_everything, select_device, train_step
    from tfkd_cli.losses import build_loss
    from tfkd_cli.models import build_model
    from tfkd_cli.recipe import LossCfg, Recipe

    device = select_device(spec["device"])
    if device.type == "cuda":  # engine._train: cudnn.benchmark on CUDA unless deterministic
        torch.backends.cudnn.benchmark = True
    recipe = Recipe(model=spec["model"], width=spec["width"], method=spec["method"], seed=0,
                    loss=LossCfg(**loss_config(spec["model"], spec["method"])))
    recipe.data.dataset, recipe.data.root = "cifar-layout", spec["root"]
    recipe.train.batch_size = spec["batch_size"]
    recipe.runtime.amp, recipe.runtime.compile = spec["amp"], spec["compile"]
    recipe.runtime.channels_last = spec["channels_last"]
    rt = recipe.runtime

    # ---- setup as engine._train (one process) ----
    data = build_data(recipe.data.dataset, recipe.data.root, download=False, per_class=None, subset_seed=0,
                      augment=True, device=device, batch_size=recipe.train.batch_size,
                      eval_batch_size=recipe.train.eval_batch_size, workers=recipe.data.workers,
                      rank=0, world_size=1, channels_last=rt.channels_last)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    autocast = _autocast(recipe, device)
    teacher = None
    if recipe.method == "kd":
        # a random-init resnet18 stands in for the trained teacher (same cost); engine: load_model(...)
        teacher = build_model("resnet18", num_classes=data.num_classes, width=recipe.width)
        teacher = teacher.to(device, memory_format=fmt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    seed_everything(recipe.seed)
    model = build_model(recipe.model, num_classes=data.num_classes, width=recipe.width)
    model = model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.optim.momentum,
                                weight_decay=recipe.optim.weight_decay, nesterov=recipe.optim.nesterov,
                                foreach=True)
    fwd = torch.compile(model) if rt.compile else model
    loss_fn = build_loss(recipe.method, **_loss_params(recipe))
    model.train()
    st = {"loss_sum": torch.zeros((), device=device, dtype=torch.float64),
          "correct": torch.zeros((), device=device, dtype=torch.int64),
          "bad_step": torch.full((), -1, device=device, dtype=torch.int64)}
    spe = data.steps_per_epoch

    def stream():
        epoch = 1
        while True:
            for step, (x, y) in enumerate(data.train_batches(epoch, recipe.seed)):
                yield epoch, step, x, y
            epoch += 1

    # ---- the engine's own step (engine.train_step) and its per-step bookkeeping ----
    def step_fn(epoch, step, x, y) -> int:
        lr = lr_at(recipe, epoch, step, spe)
        loss, logits, _ = train_step(fwd, teacher, loss_fn, optimizer, x, y, lr, autocast)
        bad_step = st["bad_step"]
        st["bad_step"] = torch.where(~torch.isfinite(loss) & (bad_step < 0), torch.tensor(step, device=device), bad_step)
        n = y.shape[0]
        st["loss_sum"] += loss.double() * n
        st["correct"] += (logits.argmax(1) == y).sum()
        if device.type == "cpu" or step % 50 == 49:  # engine: _raise_if_bad(bad_step, ...)
            if int(st["bad_step"]) >= 0:
                raise RuntimeError(f"non-finite loss at step {step}")
        return n

    return device, step_fn, stream(), lambda: {}


# The official losses re-stated (tables.md §2.2), keeping what costs time: a Python loop over the
# batch to build the virtual teacher, and KL with 'mean' reduction (divides by N*K).
def official_loss_kd(z, y, t, alpha, T):
    import torch.nn.functional as F

    kl = F.kl_div(F.log_softmax(z / T, dim=1), F.softmax(t / T, dim=1), reduction="mean")
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * T * T * kl


def official_loss_kd_regularization(z, y, alpha, T, multiplier, correct_prob=0.99):
    import torch
    import torch.nn.functional as F

    k = z.size(1)
    pd = torch.full_like(z, (1.0 - correct_prob) / (k - 1))
    for i in range(z.shape[0]):  # one Python iteration (and a device write) per sample
        pd[i, y[i]] = correct_prob
    kl = F.kl_div(F.log_softmax(z, dim=1), F.softmax(pd / T, dim=1), reduction="mean")
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * multiplier * kl


def _setup_reference(spec: dict):
    """The official-style loop: returns (device, step_fn, batch iterator, finish)."""
    import gc

    import torch
    import torch.nn as nn
    from torch.autograd import Variable
    from torch.utils.data import DataLoader

    from tfkd_cli.data.readers import read_split
    from tfkd_cli.data.reference import ReferenceDataset, official_train_transform
    from tfkd_cli.engine import select_device
    from tfkd_cli.models import build_model

    device = select_device(spec["device"])
    torch.manual_seed(230)  # main.py
    x_all, y_all, classes = read_split("cifar-layout", spec["root"], "train")
    trainset = ReferenceDataset(x_all, y_all, official_train_transform("cifar-layout"))
    del x_all, y_all  # torchvision's CIFAR100 keeps only the numpy HWC array, as ReferenceDataset does
    num_classes = len(classes)
    bs = spec["batch_size"]
    # data_loader.fetch_dataloader: shuffle=True, num_workers from params.json (here 2), no pin_memory
    train_dl = DataLoader(trainset, batch_size=bs, shuffle=True, num_workers=spec["ref_workers"])
    model = build_model(spec["model"], num_classes=num_classes, width=spec["width"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * (bs / 128), momentum=0.9, weight_decay=5e-4)
    base_lr, warm_iters = 0.1 * (bs / 128), len(train_dl)
    cfg = loss_config(spec["model"], spec["method"])
    teacher_model = None
    if spec["method"] == "kd":
        teacher_model = build_model("resnet18", num_classes=num_classes, width=spec["width"]).to(device)
        teacher_model.eval()  # train_kd(): eval mode, parameters NOT frozen, no torch.no_grad()
    ce_loss = nn.CrossEntropyLoss()
    model.train()
    meters = {"total": 0, "correct": 0, "loss_avg": 0.0, "loss_n": 0, "it": 0}

    def stream():
        while True:  # a new iterator per epoch re-spawns the workers, as in the official loop
            for batch in train_dl:
                yield batch

    def step_fn(train_batch, labels_batch) -> int:
        meters["it"] += 1  # utils.WarmUpLR, stepped every iteration of epoch 0
        for g in optimizer.param_groups:
            g["lr"] = base_lr * meters["it"] / (warm_iters + 1e-8)
        train_batch, labels_batch = train_batch.to(device), labels_batch.to(device)  # official: .cuda()
        train_batch, labels_batch = Variable(train_batch), Variable(labels_batch)
        if teacher_model is None:  # train(): zero_grad before the forward
            optimizer.zero_grad()
            output_batch = model(train_batch)
            if spec["method"] == "tfkd_reg":
                loss = official_loss_kd_regularization(output_batch, labels_batch, cfg["alpha"],
                                                       cfg["temperature"], cfg["multiplier"])
            else:
                loss = ce_loss(output_batch, labels_batch)
            loss.backward()
            optimizer.step()
        else:  # train_kd()
            output_batch = model(train_batch)
            output_teacher_batch = teacher_model(train_batch).to(device)  # official: .cuda()
            output_teacher_batch = Variable(output_teacher_batch, requires_grad=False)
            loss = official_loss_kd(output_batch, labels_batch, output_teacher_batch, cfg["alpha"],
                                    cfg["temperature"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _, predicted = output_batch.max(1)
        meters["total"] += labels_batch.size(0)
        meters["correct"] += predicted.eq(labels_batch).sum().item()  # per-step sync, as official
        meters["loss_avg"] += float(loss.data)  # RunningAverage + tqdm postfix '{:05.3f}'.format(...)
        meters["loss_n"] += 1
        _ = "{:05.3f}".format(meters["loss_avg"] / meters["loss_n"])
        return int(labels_batch.size(0))

    batches = stream()

    def finish() -> dict:
        batches.close()  # drops the DataLoader iterator: its workers are shut down and joined
        gc.collect()
        return {"rss_worker_peak_mib": _max_rss_mib(resource.RUSAGE_CHILDREN)}

    return device, step_fn, batches, finish


def _emit(kind: str, payload: dict) -> None:
    sys.stdout.write(f"{TAG}{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def run_worker(spec: dict) -> None:
    """Set up -> SETUP; `WARM` -> warm up -> READY; `RUN k [rewarm]` -> DONE {...}; `END` -> RESULT {...}."""
    import warnings

    import torch

    # nn.KLDivLoss() 'mean' warns on every call; the official main.py silences all warnings too
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, step_fn, batches, finish = (_setup_tfkd if spec["loop"] == "tfkd" else _setup_reference)(spec)
    rss_setup = _max_rss_mib(resource.RUSAGE_SELF)
    _emit("SETUP", {})
    if sys.stdin.readline().strip() != "WARM":  # warm-ups run one at a time (cudnn.benchmark times kernels)
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(spec["warmup"]):
        step_fn(*next(batches))
    _sync(device)
    _emit("READY", {"warmup_s": time.perf_counter() - t})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "END":
            break
        k, rewarm = int(cmd[1]), int(cmd[2]) if len(cmd) > 2 else 0
        for _ in range(rewarm):
            step_fn(*next(batches))
        _sync(device)
        t0 = time.perf_counter()
        images, marks = 0, []
        for _ in range(k):
            images += step_fn(*next(batches))
            if device.type == "cpu":  # both loops sync every step on the CPU anyway
                marks.append(time.perf_counter())
        _sync(device)
        done = {"seconds": time.perf_counter() - t0, "images": images, "steps": k}
        if marks:
            done["step_s"] = [round(b - a, 6) for a, b in zip([t0] + marks[:-1], marks)]
        _emit("DONE", done)
    res = {"rss_setup_mib": rss_setup, "rss_peak_mib": _max_rss_mib(resource.RUSAGE_SELF),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        res["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    res.update(finish())
    _emit("RESULT", res)


# --------------------------------------------------------------------------- loss micro-benchmark


def loss_bench(device_spec: str, reps: int) -> dict:
    """Forward+backward time of the loss alone on (128 x 100) logits: tfkd vs the official code."""
    import warnings

    import torch

    from tfkd_cli.engine import select_device
    from tfkd_cli.losses import build_loss

    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    device = select_device(device_spec)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(128, 100, generator=g).to(device)
    y = torch.randint(0, 100, (128,), generator=g).to(device)
    reg = loss_config("resnet18", "tfkd_reg")
    ce_tfkd = build_loss("ce")
    reg_tfkd = build_loss("tfkd_reg", **reg)
    ce_off = torch.nn.CrossEntropyLoss()
    cases = {
        "ce (tfkd build_loss)": lambda z: ce_tfkd(z, y),
        "tfkd_reg (tfkd build_loss)": lambda z: reg_tfkd(z, y),
        "ce (official nn.CrossEntropyLoss)": lambda z: ce_off(z, y),
        "tfkd_reg (official per-sample loop)": lambda z: official_loss_kd_regularization(
            z, y, reg["alpha"], reg["temperature"], reg["multiplier"]),
    }
    out = {}
    for name, fn in cases.items():
        z = z0.clone().requires_grad_(True)
        for _ in range(max(3, reps // 10)):
            fn(z).backward()
        _sync(device)
        best = float("inf")
        for _ in range(3):  # best of 3 blocks: the least disturbed by other load
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(z).backward()
            _sync(device)
            best = min(best, (time.perf_counter() - t0) / reps)
        out[name] = best * 1e6  # microseconds per call
    return out


# --------------------------------------------------------------------------- parent side


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Worker:
    """One worker process and the protocol lines it prints (read by a thread, so waits can time out)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.err = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.error: str | None = None
        self.done: list[dict] = []
        self.result: dict = {}

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                self.lines.put(line[len(TAG):])
        self.lines.put(None)  # EOF

    def expect(self, kind: str, timeout: float) -> dict | None:
        if self.error:
            return None
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.fail(f"no {kind} within {timeout:.0f}s")
            return None
        if line is None:
            self.fail(f"exited with code {self.proc.wait()} before {kind}")
            return None
        got, _, payload = line.partition(" ")
        if got != kind:
            self.fail(f"expected {kind}, got {got}")
            return None
        return json.loads(payload)

    def send(self, text: str) -> None:
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.fail("pipe closed")

    def fail(self, why: str) -> None:
        if self.error is None:
            self.err.seek(0)
            tail = " | ".join(self.err.read().strip().splitlines()[-4:])
            self.error = f"{why}: {tail}" if tail else why
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def run_lockstep(specs: list[dict], steps: int, block: int, rewarm: int, timeout: float,
                 log) -> list[dict]:
    """Set the workers up together, warm them up one at a time, then give them turns of `block` timed
    steps, the order reversed every round (A B C D, D C B A, ...)."""
    workers: list[Worker] = []
    try:
        for spec in specs:
            workers.append(Worker(spec))
        for w in workers:
            w.expect("SETUP", timeout)
        for w in workers:
            if w.error is None:
                w.send("WARM")
                ready = w.expect("READY", timeout)
                if ready is not None:
                    log(f"    {w.spec['method']:9s} {w.spec['loop']:9s} ready (warm-up {ready['warmup_s']:.1f}s)")
        done, blk = 0, 0
        while done < steps and any(w.error is None for w in workers):
            k = min(block, steps - done)
            order = workers if blk % 2 == 0 else workers[::-1]
            for w in order:
                if w.error is None:
                    w.send(f"RUN {k} {rewarm}")
                    d = w.expect("DONE", timeout)
                    if d is not None:
                        w.done.append(d)
            done += k
            blk += 1
        for w in workers:
            if w.error is None:
                w.send("END")
                w.result = w.expect("RESULT", timeout) or {}
                try:
                    w.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass  # its numbers are in; close() kills it
        return [summarize(w) for w in workers]
    finally:
        for w in workers:
            w.close()


def summarize(w: Worker) -> dict:
    if w.error is not None:
        return {"error": w.error}
    sec = sum(d["seconds"] for d in w.done)
    img = sum(d["images"] for d in w.done)
    n = sum(d["steps"] for d in w.done)
    out = {"images_per_s": img / sec, "seconds": sec, "images": img, "steps": n, **w.result}
    step_s = [t for d in w.done for t in d.get("step_s", [])]
    if step_s:
        # robust to a neighbour stealing the CPU for part of the run: images per median step
        out["median_images_per_s"] = (img / n) / statistics.median(step_s)
        out["step_s"] = step_s
    return out


def lockstep_groups(models: list[str], methods: list[str], how: str) -> list[tuple[str, list[str]]]:
    """Which (model, methods) run in lockstep. `pair`: each method alone (its two loops); `reg`
    (default): ce and tfkd_reg together (4 workers: the Tf-KD_reg-vs-CE goal is then measured under
    the same conditions too), other methods alone; `model`: all methods of a model together."""
    groups = []
    for model in models:
        if how == "model":
            groups.append((model, list(methods)))
            continue
        rest = list(methods)
        if how == "reg" and "ce" in rest and "tfkd_reg" in rest:
            groups.append((model, ["ce", "tfkd_reg"]))
            rest = [m for m in rest if m not in ("ce", "tfkd_reg")]
        groups += [(model, [m]) for m in rest]
    return groups


def fmt_mem(r: dict, cuda: bool) -> str:
    if "error" in r or "rss_peak_mib" not in r:
        return "-"
    if cuda:
        return f"{r['gpu_peak_mib']:.0f}"
    s = f"{r['rss_peak_mib']:.0f} (+{r['rss_peak_mib'] - r['rss_setup_mib']:.0f})"
    if "rss_worker_peak_mib" in r:
        s += f" w{r['rss_worker_peak_mib']:.0f}"
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("TFKD_BENCH_DATA", DEFAULT_ROOT),
                    help=f"folder with the extracted tiny100-32 train/test/meta (default {DEFAULT_ROOT}, "
                         "or $TFKD_BENCH_DATA)")
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
    args = ap.parse_args(argv)

    if args._worker is not None:
        run_worker(json.loads(args._worker))
        return 0

    # a terminated parent still stops its workers (the finally in run_lockstep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = find_root(args.data_root)
    if root is None:
        print(missing_root_message(args.data_root), file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    loops = [m.strip() for m in args.loops.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for lp in loops:
        if lp not in LOOPS:
            ap.error(f"unknown loop {lp!r}; choose from {', '.join(LOOPS)}")

    import torch

    from tfkd_cli.engine import select_device
    from tfkd_cli.errors import TfkdError
    from tfkd_cli.models import canonical_name

    try:
        device = select_device(args.device)
        models = [canonical_name(m) for m in models]
    except TfkdError as e:
        print(f"train_throughput: {e}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    for name in ("steps", "block"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    steps = args.steps if args.steps is not None else (48 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (16 if cuda else 2)
    block = args.block if args.block is not None else (24 if cuda else 1)
    rewarm = args.rewarm if args.rewarm is not None else (4 if cuda else 0)

    hw = torch.cuda.get_device_name(device) if cuda else f"{cpu_model()}, {os.cpu_count()} cores"
    meta = {"device": str(device), "hardware": hw, "torch": torch.__version__, "python": platform.python_version(),
            "width": args.width, "batch_size": args.batch_size, "steps": steps, "warmup": warmup, "block": block,
            "rewarm": rewarm, "group": args.group, "amp": args.amp, "compile": args.compile,
            "channels_last": args.channels_last, "ref_workers": args.ref_workers, "data_root": str(root),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    flags = " ".join(f"--{f.replace('_', '-')}" for f in ("amp", "compile", "channels_last") if getattr(args, f))
    print(f"# train throughput on {hw} | torch {torch.__version__} | {device} | width {args.width:g} | "
          f"batch {args.batch_size} | {warmup} warm-up + {steps} timed steps, lockstep turns of {block}"
          f"{f' (+{rewarm} untimed)' if rewarm else ''} | tfkd loop: {flags or 'fp32 eager'}", flush=True)

    t_start = time.perf_counter()
    merged: dict[tuple, dict] = {}
    prev_ref: dict[tuple, dict] = {}
    if args.reference_from:
        prev = json.loads(Path(args.reference_from).read_text())
        if prev["meta"]["hardware"] != hw or prev["meta"]["width"] != args.width \
                or prev["meta"]["batch_size"] != args.batch_size:
            print(f"warning: {args.reference_from} was measured on {prev['meta']['hardware']} at width "
                  f"{prev['meta']['width']}, batch {prev['meta']['batch_size']}", file=sys.stderr)
        meta["reference_from"] = args.reference_from
        found = {(r["model"], r["method"], "reference"): r["reference"] for r in prev.get("rows", [])}
        if not found:  # a run stopped early leaves its partial "results" only
            found = {tuple(k.split("/")): v for k, v in prev.get("results", {}).items() if k.endswith("/reference")}
        prev_ref = {k: {**v, "from": args.reference_from} for k, v in found.items() if "images_per_s" in v}

    def save_json(partial: bool, extra: dict) -> None:
        if args.json_out:
            blob = {"meta": meta, "partial": partial, **extra}
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(blob, indent=2) + "\n")

    for gi, (model, group) in enumerate(lockstep_groups(models, methods, args.group)):
        pairs = [(me, lp) for me in group for lp in (loops if gi % 2 == 0 else loops[::-1])]
        print(f"  {model}: " + ", ".join(f"{me}/{lp}" for me, lp in pairs) + " in lockstep", flush=True)
        specs = [{"loop": lp, "model": model, "method": me, "width": args.width, "root": str(root),
                  "device": args.device, "batch_size": args.batch_size, "warmup": warmup, "amp": args.amp,
                  "compile": args.compile, "channels_last": args.channels_last,
                  "ref_workers": args.ref_workers, "threads": args.threads} for me, lp in pairs]
        res = run_lockstep(specs, steps, block, rewarm, args.worker_timeout, lambda m: print(m, flush=True))
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

    def ratio_of(a: dict, b: dict, key: str):
        return a[key] / b[key] if key in a and key in b else None

    rows = []
    for model in models:
        for method in methods:
            a = merged.get((model, method, "tfkd"), {"error": "not run"})
            b = merged.get((model, method, "reference"), {"error": "not run"})
            rows.append({"model": model, "method": method, "tfkd": a, "reference": b,
                         "ratio": ratio_of(a, b, "images_per_s"),
                         "ratio_median_step": ratio_of(a, b, "median_images_per_s")})

    # Tf-KD_reg cost relative to CE in the tfkd loop: extra time per image, percent
    reg_cost: dict[str, dict] = {}
    for model in models:
        ce, rg = merged.get((model, "ce", "tfkd"), {}), merged.get((model, "tfkd_reg", "tfkd"), {})
        for key in ("images_per_s", "median_images_per_s"):
            if key in ce and key in rg:
                reg_cost.setdefault(model, {})[key] = (ce[key] / rg[key] - 1.0) * 100.0

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
    if args.reference_from:
        print(f"(reference columns from {args.reference_from})")
    for r in rows:
        for loop in LOOPS:
            if r[loop].get("error") not in (None, "not run"):
                print(f"  {r['model']} {r['method']} {loop} FAILED: {r[loop]['error']}")

    lb: dict = {}
    if args.loss_reps > 0:
        if args.threads:
            torch.set_num_threads(args.threads)
        lb = loss_bench(args.device, args.loss_reps)
        print(f"\nloss alone, forward+backward on 128x100 logits ({device}), microseconds per call "
              "(best of 3 blocks):")
        for k, v in lb.items():
            print(f"  {k:38s} {v:9.1f}")

    print("\ngoals:")
    goals: dict = {"speed": {}, "reg_vs_ce": {}}
    for r in rows:
        if r["ratio"] is None:
            continue
        met = r["ratio"] >= SPEED_GOAL
        goals["speed"][f"{r['model']}/{r['method']}"] = {"ratio": r["ratio"], "met": met,
                                                          "ratio_median_step": r["ratio_median_step"]}
        extra = f" (median step {r['ratio_median_step']:.2f}x)" if r["ratio_median_step"] is not None else ""
        print(f"  tfkd >= {SPEED_GOAL}x reference   {r['model']:12s} {r['method']:9s} {r['ratio']:.2f}x{extra}"
              f"  {'MET' if met else 'NOT MET'}")
    for model, cost in reg_cost.items():
        if "images_per_s" not in cost:
            continue
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
        goals["reg_vs_ce"][model] = entry
        print(line)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f}s")

    if args.json_out:
        save_json(False, {"rows": rows, "reg_cost_pct": reg_cost, "loss_bench_us": lb, "goals": goals})
        print(f"wrote {args.json_out}")
    failed = any("error" in v for v in merged.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
