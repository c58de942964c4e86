"""The lockstep harness of the throughput benchmark: worker processes and their turns.

Every (model, method, loop) runs in its own worker process (`train_throughput.py --_worker
SPEC`), so its peak memory is its own. The parent sets the workers of a lockstep group up
together, warms them up one after the other, then gives them turns of `block` timed steps, the
order reversed every round (A B C D, D C B A, ...), so they all see the same neighbours on a
shared machine. The protocol is one line per message on the worker's stdout, prefixed TAG.
"""

from __future__ import annotations

import json
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

TAG = "@@"
WORKER_SCRIPT = Path(__file__).with_name("train_throughput.py")


def max_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _emit(kind: str, payload: dict) -> None:
    sys.stdout.write(f"{TAG}{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def run_worker(spec: dict, setup: Callable) -> None:
    """`setup(spec)` -> SETUP; `WARM` -> warm up -> READY; `RUN k [rewarm]` -> DONE {...}; `END` -> RESULT {...}."""
    import warnings

    import torch

    # nn.KLDivLoss() 'mean' warns on every call; the official main.py silences all warnings too
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, step_fn, batches, finish = setup(spec)
    rss_setup = max_rss_mib(resource.RUSAGE_SELF)
    _emit("SETUP", {})
    if sys.stdin.readline().strip() != "WARM":  # warm-ups run one at a time (cudnn.benchmark times kernels)
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(spec["warmup"]):
        step_fn(*next(batches))
    sync(device)
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
        sync(device)
        t0 = time.perf_counter()
        images, marks = 0, []
        for _ in range(k):
            images += step_fn(*next(batches))
            if device.type == "cpu":  # both loops sync every step on the CPU anyway
                marks.append(time.perf_counter())
        sync(device)
        done = {"seconds": time.perf_counter() - t0, "images": images, "steps": k}
        if marks:
            done["step_s"] = [round(b - a, 6) for a, b in zip([t0] + marks[:-1], marks)]
        _emit("DONE", done)
    res = {"rss_setup_mib": rss_setup, "rss_peak_mib": max_rss_mib(resource.RUSAGE_SELF),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        res["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    res.update(finish())
    _emit("RESULT", res)



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
        cmd = [sys.executable, str(WORKER_SCRIPT), "--_worker", json.dumps(spec)]
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

