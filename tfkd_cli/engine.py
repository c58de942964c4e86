"""The training engine: one run = one resolved recipe + seed -> one run directory.

The official CIFAR protocol is the default: SGD (momentum 0.9, wd 5e-4), lr = base_lr *
batch/128, one epoch of per-iteration linear warm-up, then x0.2 at epochs 60/120/160, test
evaluation every epoch, best-epoch reporting. The teacher runs in eval mode under
inference mode.

Resume is exact: the learning rate is a pure function of (epoch, step); the data order and
augmentation are pure functions of (seed, epoch, step) (see `tfkd_cli.data`); the global RNG
states (dropout) and the running epoch sums (float64, restored bit for bit) are saved in every
checkpoint. A run killed at any point and resumed ends with the same weights and the same
metrics.csv as an uninterrupted one on the CPU.

Crash safety: every file is written atomically (temp + fsync + rename), and at the end of an
epoch last.pt is renamed into place after best.pt / epoch_N.pt, so last.pt never claims more
than the other files hold; a kill before it redoes the epoch and rewrites them identically.
metrics.csv and summary.json are rewritten from the checkpoint's history on resume. The run
lock is taken before anything in the run directory is read or changed, and an earlier run's
files are removed by --overwrite only once the new recipe, data and teacher have loaded.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tfkd_cli import checkpoint as ckpt_io
from tfkd_cli import rundir
from tfkd_cli.data import build_data
from tfkd_cli.errors import RunFailed, TfkdError
from tfkd_cli.loading import load_model
from tfkd_cli.losses import NEEDS_TEACHER, build_loss
from tfkd_cli.metrics import evaluate
from tfkd_cli.models import build_model, canonical_name, count_params
from tfkd_cli.recipe import Recipe, dump
from tfkd_cli.selection import select_epochs
from tfkd_cli.teacher_cache import TeacherCache

# Crash-point hook for tests: TFKD_FAULT=<name>:<n> SIGKILLs the process the n-th time the named
# point is reached. Points: step (before each training step), checkpoint_write (inside each
# checkpoint file's atomic write: temp file written, not yet synced or renamed), eval (before
# each end-of-epoch evaluation), metrics (after an epoch's checkpoints, before metrics.csv).
_FAULT = os.environ.get("TFKD_FAULT", "")
# TFKD_FAULT_NAN=<rank>:<step> makes that rank see a non-finite loss at that (0-based) step of
# each epoch, the way one DDP rank can meet a bad batch that the others do not.
_FAULT_NAN = os.environ.get("TFKD_FAULT_NAN", "")


class Interrupted(Exception):
    """SIGINT/SIGTERM: the run saved a checkpoint and stopped; `--resume` continues it."""

    def __init__(self, run: Path, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch} step {step}; checkpoint saved. "
                         f"Resume with: --resume --out {run}")
        self.run = run


_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: die by SIGKILL at the configured point (see TFKD_FAULT)."""
    if not _FAULT:
        return
    point, _, n = _FAULT.partition(":")
    if point != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# -- small pure pieces ---------------------------------------------------------------


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise TfkdError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TfkdError(f"device {spec} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TfkdError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return dev


def lr_at(recipe: Recipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate of `step` (0-based) in `epoch` (1-based).

    Warm-up (official utils.WarmUpLR, stepped before each iteration): base * i / W for the
    i-th iteration (1-based) of the first W iterations. Then MultiStepLR: base * gamma^m,
    m = number of milestones < epoch.
    """
    o = recipe.optim
    base = recipe.lr
    if epoch <= o.warmup_epochs:
        total = o.warmup_epochs * steps_per_epoch
        return base * ((epoch - 1) * steps_per_epoch + step + 1) / total
    return base * o.gamma ** sum(1 for m in o.milestones if epoch > m)


def train_step(fwd: nn.Module, teacher: Optional[nn.Module], loss_fn: Callable, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, lr: float, autocast: Optional[Callable] = None,
               t_logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One optimisation step; returns the (detached) loss, student logits and teacher logits.

    The teacher runs under inference mode (no graph, no saved activations: the official
    code runs it with autograd on and detaches the output afterwards, same numbers), unless
    its logits for this batch are given (`t_logits`, from the teacher cache).
    """
    for g in optimizer.param_groups:
        g["lr"] = lr
    with (autocast() if autocast else contextlib.nullcontext()):
        logits = fwd(x)
        if teacher is not None and t_logits is None:
            with torch.inference_mode():
                t_logits = teacher(x)
            t_logits = t_logits.float().clone()  # an ordinary tensor again, usable by autograd
    loss = loss_fn(logits.float(), y, None if t_logits is None else t_logits.float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach(), t_logits


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": _np_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# -- distributed ---------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: then one process per device (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), select_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


# -- the run -------------------------------------------------------------------------


@dataclass
class State:
    """Everything a checkpoint must restore besides weights and optimizer."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of epoch+1 (mid-epoch checkpoint)
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": 0})
    history: list = field(default_factory=list)  # metrics.csv rows
    acc: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "count": 0})  # running epoch stats
    train_time: float = 0.0  # seconds of training so far (all sessions, up to the checkpoint)
    run_time: float = 0.0  # wall seconds of epochs: training, evaluation, checkpoints (all sessions)
    run_time_known: bool = True  # false when resumed from a checkpoint that did not record it
    images: int = 0  # training images processed so far, all ranks
    resumes: int = 0  # times this run was resumed


_RESUME_KEYS = ("model", "optimizer", "state", "rng", "recipe_hash")


def _check_out_dir(out: Path, recipe: Recipe, resume: bool, overwrite: bool) -> Optional[dict]:
    """Decide what to do with `out` (which we hold the lock of); the checkpoint to resume from, if any."""
    if overwrite:
        return None
    try:
        summary = rundir.read_summary(out)
    except TfkdError:  # a damaged summary.json is rewritten by a resumed run; it still marks a run
        summary = {"status": "unknown"}
    last = out / rundir.LAST
    if summary and summary.get("status") == "finished" and not resume:
        raise TfkdError(f"{out} already holds a finished run; use --resume to keep it, "
                        "--overwrite to replace it, or another --out")
    if not resume and (last.exists() or summary):
        raise TfkdError(f"{out} already holds a run; use --resume to continue it or --overwrite to replace it")
    if not resume or not last.exists():
        return None
    ck = ckpt_io.load(last)
    if not ckpt_io.is_tfkd(ck) or any(k not in ck for k in _RESUME_KEYS):
        raise TfkdError(f"{last} is not a resumable tfkd checkpoint; cannot resume from it (--overwrite starts over)")
    if not isinstance(ck.get("version"), int) or ck["version"] > ckpt_io.VERSION:
        raise TfkdError(f"{last}: checkpoint format version {ck.get('version')} is not one this tfkd reads "
                        f"(<= {ckpt_io.VERSION}); upgrade tfkd")
    if ck.get("recipe_hash") != recipe.hash():
        raise TfkdError(f"{last} was written by another recipe (hash {ck.get('recipe_hash')} vs "
                        f"{recipe.hash()}); resume with the same recipe, or --overwrite")
    return ck


# What a run writes into its directory; --overwrite removes exactly these (and epoch_*.pt).
_RUN_FILES = (rundir.RECIPE, rundir.METRICS, rundir.SUMMARY, rundir.LAST, rundir.BEST, "timings.csv")


def _remove_temp_files(out: Path) -> None:
    """Temp files of atomic writes that a killed process never renamed (ours only)."""
    ours = tuple(f".{n}." for n in _RUN_FILES) + (".epoch_",)
    for p in out.iterdir():
        if ckpt_io.is_temp_file(p.name) and p.name.startswith(ours):
            p.unlink(missing_ok=True)


class _SignalGuard:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self) -> None:
        self.hit = False
        self._old: dict = {}

    def __enter__(self) -> "_SignalGuard":
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.hit:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def train(recipe: Recipe, out: Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) one training described by `recipe`; returns its summary."""
    out = Path(out)
    dd, device = init_distributed(recipe.runtime.device)
    lock = rundir.RunLock(out)
    created = False
    if dd.main:
        if out.exists() and not out.is_dir():
            raise TfkdError(f"--out {out} exists and is not a directory")
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TfkdError(f"cannot create run directory {out}: {e.strerror}") from None
        # The lock comes first: nothing in `out` is read, changed or removed without it.
        try:
            stale = lock.acquire()
        except TfkdError:
            if created:
                _rmdir_if_empty(out)
            raise
        if stale:
            log(f"note: took over the lock of process {stale[0]} on {stale[1]}, which is gone")
    try:
        if dd.main:
            _remove_temp_files(out)
            resume_ck = _check_out_dir(out, recipe, resume, overwrite)
        else:
            last = out / rundir.LAST
            resume_ck = ckpt_io.load(last) if resume and not overwrite and last.exists() else None
        try:
            return _train(recipe, out, resume_ck, overwrite, dd, device, progress, log)
        except RuntimeError as e:
            if recipe.runtime.deterministic and "deterministic" in str(e):
                first = str(e).strip().splitlines()[0].split(". ")[0]
                raise TfkdError(f"--deterministic: {first}; this model cannot train deterministically "
                                "on this device, run it without --deterministic") from None
            raise
    finally:
        lock.release()
        if created:
            _rmdir_if_empty(out)  # a run that failed before writing anything leaves no trace


def _rmdir_if_empty(out: Path) -> None:
    try:
        out.rmdir()
    except OSError:
        pass


def _autocast(recipe: Recipe, device: torch.device):
    if recipe.runtime.amp and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return None


def _train(recipe: Recipe, out: Path, resume_ck: Optional[dict], overwrite: bool, dd: Dist,
           device: torch.device, progress: bool, log: Callable[[str], None]) -> dict:
    rt = recipe.runtime
    if rt.threads:
        torch.set_num_threads(rt.threads)
    # Set both ways: the flag is process-wide and one process may train several runs (reproduce).
    torch.use_deterministic_algorithms(rt.deterministic)
    if rt.deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    channels_last = rt.channels_last
    if channels_last and device.type == "cpu" and torch.get_num_threads() > 1:
        # torch 2.14's CPU backward of a 1x1 stride-2 convolution (the ResNet shortcuts) in
        # channels_last segfaults on odd batch sizes with more than one thread, and an epoch's
        # last batch is often odd. One thread, or the default memory format, is safe.
        log("note: channels_last is off: on the CPU it crashes torch's strided 1x1 convolutions "
            "with more than one thread; use runtime.threads=1 to keep it")
        channels_last = False

    # train.batch_size is the global batch (the lr is scaled from it, as officially); with
    # torchrun each of the N processes takes batch_size / N of it.
    if recipe.train.batch_size % dd.world:
        raise TfkdError(f"train.batch_size {recipe.train.batch_size} is not divisible by the "
                        f"{dd.world} processes; choose a multiple of {dd.world}")
    data = build_data(recipe.data.dataset, recipe.data.root, download=recipe.data.download,
                      per_class=recipe.data.per_class, subset_seed=recipe.data.subset_seed,
                      augment=recipe.data.augment, device=device, batch_size=recipe.train.batch_size // dd.world,
                      eval_batch_size=recipe.train.eval_batch_size, workers=recipe.data.workers,
                      rank=dd.rank, world_size=dd.world, channels_last=channels_last,
                      val_per_class=recipe.data.val_per_class)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = _autocast(recipe, device)

    # Teacher first: a bad teacher path should fail before any file is written.
    teacher, teacher_info = None, None
    if recipe.method in NEEDS_TEACHER:
        t = recipe.teacher
        loaded = load_model(Path(t.path), model=t.model, width=t.width, num_classes=data.num_classes,
                            epoch=t.epoch)
        if recipe.method == "kd_self" and loaded.name != canonical_name(recipe.model):
            log(f"note: kd_self teacher is a {loaded.name}, student a {canonical_name(recipe.model)}")
        teacher = loaded.model.to(device, memory_format=fmt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher_info = loaded.provenance()
        old = (resume_ck or {}).get("teacher_sha256")
        if old and old != teacher_info["sha256"]:
            raise TfkdError(f"the teacher {loaded.file} changed since this run started (sha256 "
                            f"{teacher_info['sha256'][:12]} vs {old[:12]}); resume with the same teacher, or --overwrite")
        if dd.main:
            teacher_info["test"] = evaluate(teacher, data.test_batches(), autocast)
            log(f"teacher {loaded.name} ({loaded.source}, {loaded.file.name}): "
                f"test top-1 {teacher_info['test']['top1']:.2f}%")

    per_rank = recipe.train.batch_size // dd.world
    tcache = None
    if teacher is not None and rt.teacher_cache:
        tcache = TeacherCache(out.resolve().parent, {
            "teacher_sha256": teacher_info["sha256"], "teacher": [loaded.name, loaded.width],
            "data": [recipe.data.dataset, str(recipe.data.root), recipe.data.per_class,
                     recipe.data.subset_seed, recipe.data.augment]
                    + ([recipe.data.val_per_class] if recipe.data.val_per_class else []),
            "seed": recipe.seed, "batch": per_rank, "rank": [dd.rank, dd.world],
            "numerics": [device.type, rt.amp, channels_last, torch.get_num_threads(), torch.__version__]})

    seed_everything(recipe.seed)
    model = build_model(recipe.model, num_classes=data.num_classes, width=recipe.width)
    model = model.to(device, memory_format=fmt)
    arch = {"model": canonical_name(recipe.model), "num_classes": data.num_classes, "width": recipe.width}
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.optim.momentum,
                                weight_decay=recipe.optim.weight_decay, nesterov=recipe.optim.nesterov,
                                foreach=True)
    state = State()
    if resume_ck is not None:
        ckpt_io.load_weights(model, resume_ck["model"], out / rundir.LAST, f"this run's {arch['model']}")
        try:
            optimizer.load_state_dict(resume_ck["optimizer"])
            s = resume_ck["state"]
            state = State(epoch=s["epoch"], step=s["step"], best=s["best"], history=s["history"],
                          acc=s["acc"], train_time=s["train_time"], images=s["images"],
                          run_time=s.get("run_time", 0.0),
                          run_time_known=s.get("run_time_known", "run_time" in s),
                          resumes=s.get("resumes", 0) + 1)
            set_rng_state(resume_ck["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise TfkdError(f"{out / rundir.LAST} is damaged ({type(e).__name__}: {e}); cannot resume "
                            "from it (--overwrite starts over)") from None
        if dd.main:
            if state.epoch >= recipe.train.epochs:
                log(f"resuming {out}: all {state.epoch} epochs are done; finishing its files")
            else:
                log(f"resuming {out} at epoch {state.epoch + 1} step {state.step}")
            threads = resume_ck.get("threads")
            if device.type == "cpu" and threads and threads != torch.get_num_threads():
                log(f"note: this session uses {torch.get_num_threads()} CPU threads, the checkpoint {threads}; "
                    "results can differ in the last bits from an uninterrupted run (set runtime.threads)")

    net: nn.Module = model
    if dd.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    fwd = torch.compile(net) if rt.compile else net
    loss_fn = build_loss(recipe.method, **_loss_params(recipe))

    if dd.main:
        # Everything is validated: only now may files of an earlier run go.
        if overwrite:
            for name in _RUN_FILES:
                (out / name).unlink(missing_ok=True)
            for p in out.glob("epoch_*.pt"):
                p.unlink()
        elif resume_ck is None:
            (out / "timings.csv").unlink(missing_ok=True)  # from an attempt that left no checkpoint
        rundir.atomic_write_text(out / rundir.RECIPE, dump(recipe))
        if state.history:  # a kill between last.pt and metrics.csv left the file one epoch behind
            rundir.write_metrics(out, state.history)
        base_summary = {
            "status": "running", "name": recipe.name, "recipe_hash": recipe.hash(), "seed": recipe.seed,
            "model": arch["model"], "width": recipe.width, "method": recipe.method,
            "dataset": recipe.data.dataset, "num_classes": data.num_classes,
            "num_train": data.num_train, "num_test": data.num_test,
            "val_per_class": recipe.data.val_per_class, "num_val": data.val.num_test if data.val else 0,
            "params": count_params(model), "epochs": recipe.train.epochs,
            "world_size": dd.world, "amp": bool(autocast), "compile": rt.compile, "channels_last": channels_last,
            "deterministic": rt.deterministic, "teacher": teacher_info,
            **rundir.provenance(device),
        }
        rundir.write_summary(out, {**base_summary, **_results(state)})

    def save_checkpoint(path_names: list[str]) -> None:
        ck = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "arch": arch,
              "model": model.state_dict(), "optimizer": optimizer.state_dict(),
              "epoch": state.epoch, "recipe_hash": recipe.hash(), "rng": rng_state(),
              "teacher_sha256": teacher_info["sha256"] if teacher_info else None,
              "threads": torch.get_num_threads(),
              "state": {"epoch": state.epoch, "step": state.step, "best": state.best,
                        "history": state.history, "acc": state.acc, "train_time": state.train_time,
                        "run_time": state.run_time, "run_time_known": state.run_time_known,
                        "images": state.images, "resumes": state.resumes}}
        for name in path_names:
            ckpt_io.save(out / name, ck, before_replace=lambda: fault_point("checkpoint_write"))

    guard = _SignalGuard()
    timings: list[dict] = []
    steps = data.steps_per_epoch
    every = recipe.train.checkpoint_every
    with guard, _progress(progress and dd.main, recipe, steps, state) as bar:
        t_run = time.perf_counter()  # wall time booked into state.run_time up to here
        while state.epoch < recipe.train.epochs:
            epoch = state.epoch + 1
            model.train()
            t_epoch = t_mark = time.perf_counter()  # this session's part of the epoch / last time booked
            seen = booked = 0  # this session's images in this epoch / those already in state.images
            # Running epoch sums continue exactly from a mid-epoch checkpoint (float64 -> float is exact).
            mine = _rank_acc(state.acc, dd)
            loss_sum = torch.tensor(mine["loss"], device=device, dtype=torch.float64)
            correct = torch.tensor(mine["correct"], device=device, dtype=torch.int64)
            count = mine["count"]
            bad_step = torch.full((), -1, device=device, dtype=torch.int64)
            cached = tcache.load(epoch, device) if tcache else None
            collect = [] if tcache is not None and cached is None and state.step == 0 else None
            row = state.step * per_rank  # first row of this step's batch in the epoch's logits
            for step, (x, y) in enumerate(data.train_batches(epoch, recipe.seed, start_step=state.step), state.step):
                fault_point("step")
                lr = lr_at(recipe, epoch, step, steps)
                t_in = cached[row:row + y.shape[0]] if cached is not None else None
                row += y.shape[0]
                loss, logits, t_out = train_step(fwd, teacher, loss_fn, optimizer, x, y, lr, autocast, t_in)
                if collect is not None:
                    collect.append(t_out)
                if _FAULT_NAN and _nan_fault(dd.rank, step):
                    loss = loss * float("nan")
                bad_step = torch.where(~torch.isfinite(loss) & (bad_step < 0), torch.tensor(step, device=device), bad_step)
                n = y.shape[0]
                loss_sum += loss.double() * n
                correct += (logits.argmax(1) == y).sum()
                count += n
                seen += n
                # Checking for NaN syncs with the device: every step on CPU, every 50 on GPU.
                if device.type == "cpu" or step % 50 == 49:
                    _raise_if_bad(bad_step, epoch, out, dd)
                state.step = step + 1
                if bar is not None and (device.type == "cpu" or step % 20 == 0):  # float() syncs the GPU
                    bar(epoch, step + 1, float(loss), lr)
                mid = bool(every) and state.step % every == 0 and state.step < steps
                stop = _any_rank(guard.hit, dd, device) if dd.world == 1 or mid or state.step % 10 == 0 else False
                if mid or stop:
                    _raise_if_bad(bad_step, epoch, out, dd)  # never checkpoint past a bad step
                    now = time.perf_counter()
                    state.train_time += now - t_mark
                    state.run_time += now - t_run
                    state.images += (seen - booked) * dd.world
                    t_mark, t_run, booked = now, now, seen
                    state.acc = _gather_acc(loss_sum, correct, count, dd, device)
                    if dd.main:
                        save_checkpoint([rundir.LAST])
                    if stop:
                        if dd.main:
                            rundir.write_summary(out, {**base_summary, **_results(state), "status": "interrupted"})
                        raise Interrupted(out, epoch, state.step)
            _raise_if_bad(bad_step, epoch, out, dd)
            acc = {"loss": float(loss_sum), "correct": int(correct), "count": count}
            if dd.world > 1:
                t = torch.tensor([acc["loss"], acc["correct"], acc["count"]], dtype=torch.float64, device=device)
                dist.all_reduce(t)
                acc = {"loss": float(t[0]), "correct": int(t[1]), "count": int(t[2])}
            if tcache is not None:
                if cached is not None:
                    tcache.hits += 1
                else:
                    tcache.misses += 1
                    if collect:  # a whole epoch computed in this session: store it for the next student
                        try:
                            tcache.save(epoch, torch.cat(collect))
                        except TfkdError as e:  # a cache must never fail a run (e.g. a full disk)
                            log(f"note: teacher logits not cached ({e}); continuing without the cache")
                            tcache = None
            now = time.perf_counter()
            train_s = now - t_epoch
            state.train_time += now - t_mark
            state.images += (seen - booked) * dd.world
            fault_point("eval")
            test = evaluate(model, data.test_batches(), autocast) if dd.main else None
            val = evaluate(model, data.val.test_batches(), autocast) if dd.main and data.val else None
            state.epoch, state.step = epoch, 0
            state.acc = {"loss": 0.0, "correct": 0, "count": 0}
            now = time.perf_counter()
            state.run_time += now - t_run  # this epoch's checkpoint write counts toward the next
            t_run = now
            if dd.main:
                row = {"epoch": epoch, "lr": float(f"{lr_at(recipe, epoch, steps - 1, steps):.6g}"),
                       "train_loss": round(acc["loss"] / max(acc["count"], 1), 6),
                       "train_top1": round(acc["correct"] / max(acc["count"], 1) * 100, 4),
                       **{f"test_{k}": round(v, 4) for k, v in test.items()},
                       **({"val_top1": round(val["top1"], 4), "val_nll": round(val["nll"], 4)} if val else {})}
                state.history.append(row)
                is_best = test["top1"] >= state.best["top1"]  # official: ties go to the later epoch
                if is_best:
                    state.best = {"top1": test["top1"], "epoch": epoch}
                # Crash safety: last.pt is written last. A kill before its rename resumes from the
                # previous last.pt and redoes this epoch, rewriting best.pt/epoch_N.pt identically.
                names = ([rundir.BEST] if is_best else []) + \
                        ([rundir.epoch_file(epoch)] if epoch in recipe.train.keep_epochs else []) + [rundir.LAST]
                save_checkpoint(names)
                fault_point("metrics")
                rundir.write_metrics(out, state.history)
                timings.append({"epoch": epoch, "train_s": round(train_s, 3),
                                "images_per_s": round(seen * dd.world / max(train_s, 1e-9), 1)})
                _append_timings(out, timings[-1])
                rundir.write_summary(out, {**base_summary, **_results(state)})
            if dd.world > 1:
                dist.barrier()

    cache = {"teacher_cache": {"dir": str(tcache.dir), "epochs_reused": tcache.hits,
                               "epochs_computed": tcache.misses}} if tcache is not None else {}
    result = {**base_summary, **_results(state), **cache, "status": "finished"} if dd.main else {}
    if dd.main:
        rundir.write_summary(out, result)
    return result


def _any_rank(flag: bool, dd: Dist, device: torch.device) -> bool:
    """`flag` on any rank (a signal may reach the ranks of a DDP run at different steps)."""
    if dd.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gather_acc(loss_sum: torch.Tensor, correct: torch.Tensor, count: int, dd: Dist,
                device: torch.device) -> dict:
    """The running epoch sums for a mid-epoch checkpoint; with DDP, every rank's own sums."""
    acc = {"loss": float(loss_sum), "correct": int(correct), "count": count}
    if dd.world > 1:
        mine = torch.tensor([acc["loss"], acc["correct"], acc["count"]], dtype=torch.float64, device=device)
        parts = [torch.empty_like(mine) for _ in range(dd.world)]
        dist.all_gather(parts, mine)
        acc["ranks"] = [[float(p[0]), int(p[1]), int(p[2])] for p in parts]
    return acc


def _rank_acc(acc: dict, dd: Dist) -> dict:
    """This rank's share of a checkpoint's running epoch sums."""
    ranks = acc.get("ranks")
    if dd.world > 1 and ranks and len(ranks) == dd.world:
        loss, correct, count = ranks[dd.rank]
        return {"loss": loss, "correct": correct, "count": count}
    return acc


def _nan_fault(rank: int, step: int) -> bool:
    """Test hook (TFKD_FAULT_NAN): should this rank's loss at this step count as non-finite?"""
    return _FAULT_NAN == f"{rank}:{step}"


def _raise_if_bad(bad_step: torch.Tensor, epoch: int, out: Path, dd: Dist) -> None:
    """Stop the run at the first non-finite loss. Under DDP every rank calls this at the same
    steps and takes the max over ranks, so all ranks stop together: a rank that stopped alone
    would leave the others waiting forever in the next gradient all-reduce."""
    if dd.world > 1:
        bad_step = bad_step.clone()
        dist.all_reduce(bad_step, op=dist.ReduceOp.MAX)
    step = int(bad_step)
    if step < 0:
        return
    msg = (f"non-finite loss at epoch {epoch} step {step + 1}; stopped. The last good checkpoint "
           f"is kept in {out / rundir.LAST}" if (out / rundir.LAST).exists() else
           f"non-finite loss at epoch {epoch} step {step + 1}; stopped before any checkpoint")
    if dd.main:
        s = rundir.read_summary(out) or {}
        s.update({"status": "failed", "error": msg})
        rundir.write_summary(out, s)
    raise RunFailed(msg)


def _results(state: State) -> dict:
    picked = select_epochs(state.history)  # best (test-selected, official), selected (on val), last
    return {"epochs_done": state.epoch, "resumes": state.resumes, **picked,
            "train_time_s": round(state.train_time, 2),
            "run_time_s": round(state.run_time, 2) if state.run_time_known else None,
            "images_per_s": round(state.images / state.train_time, 1) if state.train_time > 0 else None}


def _append_timings(out: Path, row: dict) -> None:
    p = out / "timings.csv"
    new = not p.exists()
    with open(p, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(str(v) for v in row.values()) + "\n")


def _loss_params(recipe: Recipe) -> dict:
    l = recipe.loss
    return {"alpha": l.alpha, "temperature": l.temperature, "multiplier": l.multiplier,
            "correct_prob": l.correct_prob, "epsilon": l.epsilon, "semantics": l.semantics}


@contextlib.contextmanager
def _progress(enabled: bool, recipe: Recipe, steps: int, state: State) -> Iterator:
    """A rich progress bar with loss, lr and images/s; yields an update function or None."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = [TextColumn("[bold]{task.fields[tag]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.4g}  {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn()]
    with Progress(*cols, transient=True) as p:
        task = p.add_task("train", total=steps, tag="", loss=0.0, lr=0.0, ips=0.0)
        t0, n0 = [time.perf_counter()], [0]
        cur = [0]

        def update(epoch: int, step: int, loss: float, lr: float) -> None:
            if epoch != cur[0]:
                cur[0] = epoch
                t0[0], n0[0] = time.perf_counter(), step - 1
            dt = time.perf_counter() - t0[0]
            ips = (step - n0[0]) * recipe.train.batch_size / dt if dt > 0 else 0.0
            p.update(task, completed=step, tag=f"epoch {epoch}/{recipe.train.epochs}", loss=loss, lr=lr, ips=ips)

        yield update
