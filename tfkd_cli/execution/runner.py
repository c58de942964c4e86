"""Execute a plan: dependency order, skip finished runs, resume interrupted ones, share work.

Each run is a child process (`tfkd run RECIPE --out DIR --resume`), so a crash or an OOM in
one run cannot take the others down, and `--jobs N` runs N independent runs at once, each
with its share of CPU threads or its own device. Two `reproduce` processes on one table
split the pending runs: a run claimed (`rundir.Claim`) or locked by another live process is
left to it and waited for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tfkd_cli.storage import rundir
from tfkd_cli.config.recipe import dump
from tfkd_cli.tables.plan import PlannedRun, unique_runs

FINISHED, FAILED, BLOCKED, INTERRUPTED, EXTERNAL = "finished", "failed", "blocked", "interrupted", "external"
LOCKED = "locked"  # another process holds the run; wait for it


@dataclass
class Job:
    run: PlannedRun
    proc: subprocess.Popen
    log: Path
    started: float
    claim: rundir.Claim


def dir_status(p: PlannedRun) -> Optional[str]:
    """finished / failed / None (pending or partial) from the summary in the run directory."""
    if p.external:
        return EXTERNAL
    s = rundir.read_summary(p.dir)
    if not s or not p.recipe.matches_hash(s.get("recipe_hash")):
        return None
    return {"finished": FINISHED, "failed": FAILED}.get(s.get("status"))


def status_of(p: PlannedRun) -> Optional[str]:
    """The run's status, where a finished record (made here or on another machine) counts as finished."""
    return FINISHED if p.record is not None else dir_status(p)


def weights_needed(plan: list[PlannedRun]) -> list[PlannedRun]:
    """Runs finished only as a record (no checkpoint here) whose weights a pending student
    needs: they are trained again from their recipe (and then checked against the record)."""
    by_key = {(p.id, p.seed): p for p in plan}
    again: dict[Path, PlannedRun] = {}
    changed = True
    while changed:  # a retrained teacher may itself need its teacher's weights
        changed = False
        for p in unique_runs(plan):
            if status_of(p) == FINISHED and p.dir not in again:
                continue  # nobody needs weights from its teachers
            for k in p.deps:
                q = by_key[k]
                if q.record is not None and dir_status(q) != FINISHED and q.dir not in again:
                    again[q.dir] = q
                    changed = True
    return list(again.values())


def _command(p: PlannedRun, recipe_file: Path, threads: int, device: Optional[str]) -> list[str]:
    cmd = [sys.executable, "-m", "tfkd_cli", "run", str(recipe_file), "--out", str(p.dir), "--resume", "--quiet"]
    if threads:
        cmd += ["--set", f"runtime.threads={threads}"]
    if device:
        cmd += ["--set", f"runtime.device={device}"]
    return cmd


def _run_inline(p: PlannedRun, log: Callable[[str], None]) -> str:
    """One run in this process (jobs=1): no interpreter start-up, and the progress bar shows."""
    from tfkd_cli.errors import Interrupted, RunFailed, TfkdError
    from tfkd_cli.training.engine import train

    log(f"start  {p.name:28s} -> {p.dir.name}")
    t0 = time.time()
    try:
        s = train(p.recipe, p.dir, resume=True, progress=sys.stderr.isatty(), log=log)
    except Interrupted:
        raise KeyboardInterrupt from None
    except RunFailed as e:
        log(f"FAILED {p.name:28s} {e}")
        return FAILED
    except TfkdError as e:
        if rundir.is_locked(p.dir):
            log(f"wait   {p.name:28s} another process runs it")
            return LOCKED
        log(f"FAILED {p.name:28s} {e}")
        return FAILED
    log(f"done   {p.name:28s} {time.time() - t0:7.1f}s  best top-1 {(s.get('best') or {}).get('top1')}")
    return FINISHED


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. under Slurm or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(devices: Optional[list[str]] = None) -> int:
    """Runs at once when --jobs is not given: one per device named; one on a GPU; on the CPU one
    run per core, each with one thread. Measured (benchmarks/threads.py, 2-core AMD EPYC VM,
    four digits runs): one-thread runs side by side finished 1.31x sooner than two-thread runs
    one at a time when quiet, and 2.13x sooner beside one busy process, since a two-thread run
    stalls whenever the scheduler takes one of its threads away."""
    if devices:
        return len(devices)
    import torch

    return 1 if torch.cuda.is_available() else usable_cores()


def run_plan(plan: list[PlannedRun], *, jobs: int = 1, devices: Optional[list[str]] = None,
             retry_failed: bool = False, log: Callable[[str], None] = print,
             poll: float = 0.5, on_finished: Optional[Callable[[PlannedRun], None]] = None) -> dict[Path, str]:
    """Run every pending run; returns run dir -> final status. `on_finished(run)` is called as
    soon as a run this call trained finishes (reproduce records it then)."""
    runs = unique_runs(plan)
    sched = _Scheduler(plan, jobs, list(devices or []), log, on_finished)
    again = {q.dir for q in weights_needed(plan)}
    for q in runs:
        if q.dir in again:
            log(f"again  {q.name:28s} finished elsewhere (record {q.record}); a student needs its "
                "weights, so it is trained again from its recipe and checked against the record")
    for p in runs:
        st = None if p.dir in again else status_of(p)
        if st == FAILED and retry_failed:
            st = None
        if st:
            sched.state[p.dir] = st
    sched.todo = [p for p in runs if p.dir not in sched.state]
    if 0 < len(sched.todo) < jobs:  # fewer runs than workers: give each run more threads
        jobs = sched.jobs = len(sched.todo)
    log(f"{len(runs)} runs: {len(runs) - len(sched.todo)} already done, {len(sched.todo)} to run (jobs={jobs})")
    if jobs == 1:  # import the engine before any lock check, not between a check and train's lock
        from tfkd_cli.training import engine  # noqa: F401  (seconds on first import: a wide race window)
    try:
        while sched.todo or sched.active:
            for job in list(sched.active):
                sched.reap(job)
            started = sched.start_ready()
            if sched.todo and not sched.active and not started:
                if not any(rundir.is_locked(p.dir) or _claimed(p) for p in sched.todo):
                    stuck = ", ".join(p.name for p in sched.todo)
                    raise RuntimeError(f"plan cannot progress: {stuck}")  # a bug, not user input
            if sched.active or sched.todo:
                time.sleep(poll)
    except KeyboardInterrupt:
        for job in sched.active:
            try:
                job.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                job.proc.kill()
        raise
    return sched.state


def _claimed(p: PlannedRun) -> bool:
    """Whether another process has claimed `p` (taking and dropping our own claim to find out)."""
    c = rundir.Claim(p.dir)
    if c.take():
        c.drop()
        return False
    return True


class _Scheduler:
    """The local executor's state: what is done (`state`), waiting (`todo`) and running (`active`)."""

    def __init__(self, plan: list[PlannedRun], jobs: int, devices: list[str], log: Callable[[str], None],
                 on_finished: Optional[Callable[[PlannedRun], None]] = None):
        self.by_key = {(p.id, p.seed): p for p in plan}
        self.jobs, self.devices, self.log = jobs, devices, log
        self.on_finished = on_finished or (lambda p: None)
        self.state: dict[Path, str] = {}
        self.todo: list[PlannedRun] = []
        self.active: list[Job] = []
        self.next_slot = 0

    @property
    def threads(self) -> int:
        """Torch threads of each child run: the cores shared out (0: the default, one job inline)."""
        return max(1, usable_cores() // self.jobs) if self.jobs > 1 else 0

    def reap(self, job: Job) -> None:
        """Book a finished child process (nothing while it runs)."""
        rc = job.proc.poll()
        if rc is None:
            return
        self.active.remove(job)
        job.claim.drop()
        p = job.run
        if rc == 0 and rundir.is_finished(p.dir):
            self.state[p.dir] = FINISHED
            self.on_finished(p)
            best = ((rundir.read_summary(p.dir) or {}).get("best") or {}).get("top1")
            self.log(f"done   {p.name:28s} {time.time() - job.started:7.1f}s  best top-1 {best}")
        elif rc == 130:
            self.state[p.dir] = INTERRUPTED
            raise KeyboardInterrupt
        elif rundir.is_locked(p.dir):
            self.todo.append(p)  # another process holds it: wait for that one
        else:
            self.state[p.dir] = FAILED
            tail = job.log.read_text().strip().splitlines()[-1:] if job.log.exists() else []
            self.log(f"FAILED {p.name:28s} exit {rc}: {tail[0] if tail else ''} (log: {job.log})")

    def start_ready(self) -> bool:
        """Start (or, with one job, run inline) every run whose teachers are done, up to `jobs`.
        First the runs that share no teacher with a running run, then the rest: two students of
        one teacher side by side both compute its logits, one after the other the second reads
        them from the cache (storage/teacher_cache.py; 66 teacher-epochs computed twice in one
        mini seed of table3 before this order)."""
        started, deferred = False, []
        for p in list(self.todo):
            if len(self.active) >= self.jobs:
                return started
            if self._shares_teacher(p):
                deferred.append(p)
            else:
                started = self._try_start(p) or started
        for p in deferred:  # only on workers that nothing else would use
            if len(self.active) >= self.jobs:
                break
            started = self._try_start(p) or started
        return started

    def _shares_teacher(self, p: PlannedRun) -> bool:
        return bool(set(p.deps) & {d for job in self.active for d in job.run.deps})

    def _try_start(self, p: PlannedRun) -> bool:
        """Start `p` if its teachers are done and nobody else runs it; book it if it cannot run."""
        dep_states = [self.state.get(self.by_key[d].dir) for d in p.deps]
        if any(s in (FAILED, BLOCKED) for s in dep_states):
            self.todo.remove(p)
            self.state[p.dir] = BLOCKED
            self.log(f"blocked {p.name}: a teacher run failed")
            return False
        if not all(s in (FINISHED, EXTERNAL) for s in dep_states):
            return False
        st = dir_status(p)  # not status_of: a run with a record is here to be trained again
        if st in (FINISHED, FAILED):
            self.todo.remove(p)
            self.state[p.dir] = st
            return False
        claim = rundir.Claim(p.dir)
        if rundir.is_locked(p.dir) or not claim.take():
            return False  # being run (or being started) by another process; check again later
        self.todo.remove(p)
        if self.jobs == 1:
            try:
                st = _run_inline(p, self.log)
            finally:
                claim.drop()
            if st == LOCKED:
                self.todo.append(p)
            else:
                self.state[p.dir] = st
                if st == FINISHED:
                    self.on_finished(p)
        else:
            self.active.append(self._spawn(p, claim))
        return True

    def _spawn(self, p: PlannedRun, claim: rundir.Claim) -> Job:
        """`tfkd run` of the run's resolved recipe in a child process, logging to runs/.logs/."""
        p.dir.mkdir(parents=True, exist_ok=True)
        recipe_file = p.dir.parent / ".plans" / f"{p.dir.name}.yaml"
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_text(recipe_file, dump(p.recipe))
        device = self.devices[self.next_slot % len(self.devices)] if self.devices else None
        self.next_slot += 1
        logf = p.dir.parent / ".logs" / f"{p.dir.name}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        with open(logf, "ab") as fh:
            proc = subprocess.Popen(_command(p, recipe_file, self.threads, device), stdout=fh,
                                    stderr=subprocess.STDOUT)
        self.log(f"start  {p.name:28s} -> {p.dir.name}")
        return Job(p, proc, logf, time.time(), claim)
