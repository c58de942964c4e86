"""The epoch loop: training steps, mid-epoch checkpoints, the end of each epoch, the run's files.

Resume is exact: the learning rate is a pure function of (epoch, step); the data order and
augmentation are pure functions of (seed, epoch, step) (see `tfkd_cli.data`); the global RNG
states (dropout) and the running epoch sums (float64, restored bit for bit) are saved in every
checkpoint.

Crash safety: at the end of an epoch last.pt is renamed into place after best.pt / epoch_N.pt,
so last.pt never claims more than the other files hold; a kill before it redoes the epoch and
rewrites them identically. Other code adds per-step work in `EpochLoop._after_step` and
per-epoch work in `EpochLoop._after_epoch` (both on every rank; `self.dd.main` for files).
Code outside the loop acts on a run through `Hooks` (the crash tests' faults, `tfkd_cli.training.faults`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from tfkd_cli import fold
from tfkd_cli.config.recipe import OptimCfg, Recipe
from tfkd_cli.errors import Interrupted, RunFailed, TfkdError
from tfkd_cli.metrics import evaluate
from tfkd_cli.storage import checkpoint as ckpt_io
from tfkd_cli.storage import rundir
from tfkd_cli.training import channels_last, tracking
from tfkd_cli.training.build import Run
from tfkd_cli.training.runtime import Dist, SignalGuard, any_rank, rng_state
from tfkd_cli.training.state import Clock, EpochSums, State


class Hooks:
    """Points where code outside the loop acts on a training run; here each does nothing.

    The crash-safety tests' faults (`tfkd_cli.training.faults`) subclass it to kill the process or spoil
    a loss at one of these points, so the loop never knows whether a fault is set.
    """

    def before_step(self) -> None:
        """Before each training step (every rank)."""

    def step_loss(self, rank: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of `step` (0-based in its epoch) as the loop records it and checks it is finite."""
        return loss

    def before_replace(self) -> None:
        """Inside each checkpoint file's atomic write: temp file written, not yet synced or renamed."""

    def before_eval(self) -> None:
        """Before each end-of-epoch evaluation (every rank)."""

    def after_checkpoints(self) -> None:
        """After an epoch's checkpoints, before metrics.csv (rank 0)."""


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class LoopSettings:
    """What the epoch loop reads of a run's recipe, taken once when the run starts (`of`)."""

    epochs: int
    batch_size: int  # per process (the progress bar's images/s)
    seed: int  # the data order
    checkpoint_every: int  # mid-epoch checkpoints every N steps (0: none)
    keep_epochs: list[int]  # epoch_N.pt files to keep
    fast_eval: bool  # evaluate a conv-BN folded copy
    optim: OptimCfg  # with `lr`, the learning-rate schedule (`lr_at`)
    lr: float
    recipe_hash: str  # in every checkpoint
    base_summary: dict  # summary.json's fixed part (rank 0; {} on the others)

    @classmethod
    def of(cls, recipe: Recipe, base_summary: dict) -> "LoopSettings":
        t = recipe.train
        return cls(t.epochs, t.batch_size, recipe.seed, t.checkpoint_every, t.keep_epochs, recipe.runtime.fast_eval,
                   recipe.optim, recipe.lr, recipe.hash(), base_summary)


def lr_at(recipe: Recipe | LoopSettings, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate of `step` (0-based) in `epoch` (1-based).

    `recipe`: a run's recipe or its LoopSettings (both hold `optim` and `lr`).
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
    with channels_last.safe_step(x):  # one thread for an odd channels_last CPU batch (torch 2.14 crash)
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


def fit_step(recipe: Recipe | LoopSettings, run: Run, fwd: nn.Module, sums: EpochSums, epoch: int, step: int,
             x: torch.Tensor, y: torch.Tensor, t_in: Optional[torch.Tensor] = None, hooks: Hooks = NO_HOOKS):
    """The engine's training step with its bookkeeping; returns (loss, lr, teacher logits)."""
    lr = lr_at(recipe, epoch, step, run.data.steps_per_epoch)
    loss, logits, t_out = train_step(fwd, run.teacher, run.loss_fn, run.optimizer, x, y, lr, run.autocast, t_in)
    loss = hooks.step_loss(sums.dd.rank, step, loss)
    sums.add(step, loss, logits, y)
    if run.diagnose is not None:  # diagnostics (issue #17): loss-term gradient norms, from the logits only
        sums.diag.add(run.diagnose(logits, y, t_out))
    return loss, lr, t_out


class EpochLoop:
    """Trains `state` on to the last epoch, checkpointing and writing the run's files."""

    def __init__(self, settings: LoopSettings, run: Run, fwd: nn.Module, state: State, out: Path,
                 dd: Dist, device: torch.device, log: Callable[[str], None], hooks: Hooks = NO_HOOKS):
        self.settings, self.run, self.fwd, self.state, self.out = settings, run, fwd, state, out
        self.dd, self.device, self.log, self.hooks = dd, device, log, hooks
        self.cache = run.cache  # dropped if it cannot be written
        self.guard = SignalGuard()
        self.bar: Optional[Callable] = None
        self.track = tracking.NONE  # TensorBoard / W&B, given to run_epochs
        fast = settings.fast_eval  # evaluation runs on a conv-BN folded copy (runtime.fast_eval)
        self.eval_cl = fast and (run.channels_last or device.type == "cpu")
        self.eval_pairs = fold.fold_pairs(run.model) if fast and dd.main else None  # traced once
        self.clock = Clock(dd.world)
        self.cached: Optional[torch.Tensor] = None  # this epoch's teacher logits from the cache
        self.collect: Optional[list] = None  # this epoch's teacher logits, computed here, to store

    def run_epochs(self, progress: bool, track: tracking.Trackers = tracking.NONE) -> dict:
        """Train to the end (or raise Interrupted/RunFailed); the finished summary (rank 0, else {}).
        `track`: the run's trackers (`tracking.open`), closed here."""
        steps = self.run.data.steps_per_epoch
        self.track = track
        with self.guard, self.track, _progress(progress and self.dd.main, self.settings, steps, self.state) as self.bar:
            self.clock = Clock(self.dd.world)  # wall time booked into state.run_time up to here
            while self.state.epoch < self.settings.epochs:
                epoch = self.state.epoch + 1
                sums = self._train_epoch(epoch)
                self._end_epoch(epoch, sums)
        if not self.dd.main:
            return {}
        c = self.cache
        cache = {"teacher_cache": {"dir": str(c.dir), "epochs_reused": c.hits,
                                   "epochs_computed": c.misses}} if c is not None else {}
        result = {**self.settings.base_summary, **self.state.summary(), **cache, "status": "finished"}
        rundir.write_summary(self.out, result)
        return result

    def _train_epoch(self, epoch: int) -> EpochSums:
        state, data, every = self.state, self.run.data, self.settings.checkpoint_every
        steps = data.steps_per_epoch
        self.run.model.train()
        self.clock.start_epoch()
        sums = EpochSums(state.acc, self.dd, self.device)
        self.cached = cached = self.cache.load(epoch, self.device) if self.cache else None
        self.collect = [] if self.cache is not None and cached is None and state.step == 0 else None
        row = state.step * data.batch_size  # first row of this step's batch in the epoch's logits
        for step, (x, y) in enumerate(data.train_batches(epoch, self.settings.seed, start_step=state.step), state.step):
            self.hooks.before_step()
            t_in = cached[row:row + y.shape[0]] if cached is not None else None
            row += y.shape[0]
            loss, lr, t_out = fit_step(self.settings, self.run, self.fwd, sums, epoch, step, x, y, t_in, self.hooks)
            if self.collect is not None:
                self.collect.append(t_out)
            self.clock.seen += y.shape[0]
            if sums.check_due(step):
                self._stop_if_bad(sums, epoch)
            state.step = step + 1
            self._after_step(epoch, step, loss, lr)
            mid = bool(every) and state.step % every == 0 and state.step < steps
            stop = any_rank(self.guard.hit, self.dd, self.device) \
                if self.dd.world == 1 or mid or state.step % 10 == 0 else False
            if mid or stop:
                self._checkpoint_mid(epoch, sums, stop)
        return sums

    def eval_copy(self) -> nn.Module:
        """The model to evaluate: a folded channels_last copy (fast_eval), else the model itself."""
        return fold.eval_model(self.run.model, fold=self.settings.fast_eval, channels_last=self.eval_cl,
                               pairs=self.eval_pairs)

    def _after_step(self, epoch: int, step: int, loss: torch.Tensor, lr: float) -> None:
        """Per-step reporting (every rank); `float(loss)` syncs the device, so not every GPU step."""
        self.track.step((epoch - 1) * self.run.data.steps_per_epoch + self.state.step, lr)
        if self.bar is not None and (self.device.type == "cpu" or step % 20 == 0):
            self.bar(epoch, step + 1, float(loss), lr)

    def _checkpoint_mid(self, epoch: int, sums: EpochSums, stop: bool) -> None:
        """last.pt inside an epoch (train.checkpoint_every, or a signal: then stop)."""
        self._stop_if_bad(sums, epoch)  # never checkpoint past a bad step
        self.clock.book(self.state)
        self.state.acc = sums.snapshot()
        self.track.flush()
        if self.dd.main:
            self._save([rundir.LAST])
        if stop:
            if self.dd.main:
                rundir.write_summary(self.out, {**self.settings.base_summary, **self.state.summary(), "status": "interrupted"})
            raise Interrupted(self.out, epoch, self.state.step)

    def _end_epoch(self, epoch: int, sums: EpochSums) -> None:
        state, settings, steps = self.state, self.settings, self.run.data.steps_per_epoch
        self._stop_if_bad(sums, epoch)
        acc = sums.totals()
        self._cache_epoch(epoch)
        train_s = self.clock.book(state, run=False)
        self.hooks.before_eval()
        net = self.eval_copy() if self.dd.main else None
        test = evaluate(net, self.run.data.test_batches(), self.run.autocast) if self.dd.main else None
        val_data = self.run.data.val  # data.val_per_class > 0: the held-out training images
        val = evaluate(net, val_data.test_batches(), self.run.autocast) if self.dd.main and val_data else None
        state.epoch, state.step = epoch, 0
        state.acc = {"loss": 0.0, "correct": 0, "count": 0}
        self.clock.book(state, train=False)  # this epoch's checkpoint write counts toward the next
        row = None
        if self.dd.main:
            row = {"epoch": epoch, "lr": float(f"{lr_at(settings, epoch, steps - 1, steps):.6g}"),
                   "train_loss": round(acc["loss"] / max(acc["count"], 1), 6),
                   "train_top1": round(acc["correct"] / max(acc["count"], 1) * 100, 4),
                   **{f"test_{k}": round(v, 4) for k, v in test.items()},
                   **({"val_top1": round(val["top1"], 4), "val_nll": round(val["nll"], 4)} if val else {}),
                   **{k: None if v is None else float(f"{v:.6g}") for k, v in acc["diag"].items()}}  # issue #17
            state.history.append(row)
            is_best = test["top1"] >= state.best["top1"]  # official: ties go to the later epoch
            if is_best:
                state.best = {"top1": test["top1"], "epoch": epoch}
            # Crash safety: last.pt is written last. A kill before its rename resumes from the
            # previous last.pt and redoes this epoch, rewriting best.pt/epoch_N.pt identically.
            names = ([rundir.BEST] if is_best else []) + \
                    ([rundir.epoch_file(epoch)] if epoch in settings.keep_epochs else []) + [rundir.LAST]
            self.track.epoch(row)  # before the checkpoint: a tracker's stream never lags it
            self._save(names)
            self.hooks.after_checkpoints()
        self._after_epoch(epoch, row, {"epoch": epoch, "train_s": round(train_s, 3),
                                       "images_per_s": round(self.clock.seen * self.dd.world / max(train_s, 1e-9), 1)})
        if self.dd.world > 1:
            dist.barrier()

    def _after_epoch(self, epoch: int, row: Optional[dict], timing: dict) -> None:
        """Per-epoch files, after the epoch's checkpoints (every rank; `row` is None off rank 0)."""
        if self.dd.main:
            rundir.write_metrics(self.out, self.state.history)
            rundir.append_timings(self.out, timing)
            rundir.write_summary(self.out, {**self.settings.base_summary, **self.state.summary()})

    def _cache_epoch(self, epoch: int) -> None:
        """Count the epoch as a cache hit or miss; store a whole epoch computed in this session."""
        if self.cache is None:
            return
        if self.cached is not None:
            self.cache.hits += 1
            return
        self.cache.misses += 1
        if self.collect:  # a whole epoch computed in this session: store it for the next student
            try:
                self.cache.save(epoch, torch.cat(self.collect))
            except TfkdError as e:  # a cache must never fail a run (e.g. a full disk)
                self.log(f"note: teacher logits not cached ({e}); continuing without the cache")
                self.cache = None

    def _save(self, names: list[str]) -> None:
        r = self.run
        ck = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "arch": r.arch,
              "model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
              "epoch": self.state.epoch, "recipe_hash": self.settings.recipe_hash, "rng": rng_state(),
              "teacher_sha256": r.teacher_info["sha256"] if r.teacher_info else None,
              "threads": torch.get_num_threads(), "state": self.state.to_dict()}
        for name in names:
            ckpt_io.save(self.out / name, ck, before_replace=self.hooks.before_replace)

    def _stop_if_bad(self, sums: EpochSums, epoch: int) -> None:
        """Stop the run at the first non-finite loss (all ranks together)."""
        step = sums.first_bad()
        if step < 0:
            return
        out = self.out
        msg = (f"non-finite loss at epoch {epoch} step {step + 1}; stopped. The last good checkpoint "
               f"is kept in {out / rundir.LAST}" if (out / rundir.LAST).exists() else
               f"non-finite loss at epoch {epoch} step {step + 1}; stopped before any checkpoint")
        if self.dd.main:
            s = rundir.read_summary(out) or {}
            s.update({"status": "failed", "error": msg})
            rundir.write_summary(out, s)
        raise RunFailed(msg)


@contextlib.contextmanager
def _progress(enabled: bool, settings: LoopSettings, steps: int, state: State) -> Iterator:
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
            ips = (step - n0[0]) * settings.batch_size / dt if dt > 0 else 0.0
            p.update(task, completed=step, tag=f"epoch {epoch}/{settings.epochs}", loss=loss, lr=lr, ips=ips)

        yield update
