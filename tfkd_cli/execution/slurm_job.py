"""One Slurm job per run: what the job runs (`TrainJob`), how it is submitted (`Submitter`),
and what it leaves: the record in its run directory (slurm.json) and submitit's files.

The job always resumes: a resubmitted or requeued run continues from its last checkpoint
with tfkd's exact resume. Under several tasks it trains under DDP with the environment
torchrun would give it.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Optional

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import dump
from tfkd_cli.tables.plan import PlannedRun

RECORD = "slurm.json"  # in the run directory


@dataclass
class SlurmOptions:
    """Where and how each run's job is placed (--slurm-* flags over --cluster cluster.yaml)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: int = 1440  # minutes per job; a run longer than that is requeued and resumes
    gpus_per_run: int = 0
    cpus_per_run: int = 4
    tasks_per_run: int = 0  # DDP ranks per run; 0 = one per GPU (or 1 without GPUs)
    mem: Optional[str] = None  # e.g. 32G
    max_parallel: int = 0  # jobs queued or running at once; 0 = no limit
    setup: list[str] = field(default_factory=list)  # shell lines run before each job

    @property
    def tasks(self) -> int:
        return self.tasks_per_run or max(1, self.gpus_per_run)


class TrainJob:
    """What a Slurm job runs: `tfkd run RECIPE --out DIR --resume`, under DDP when it has several tasks.

    submitit calls `checkpoint` on SIGUSR2 (time limit, preemption): the same call is requeued,
    and as it always resumes, it continues from the run's last checkpoint.
    """

    def __call__(self, recipe_file: str, out: str, threads: int) -> str:
        from tfkd_cli.config.recipe import resolve

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            import submitit

            # RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* as torchrun would set them; each rank keeps every
            # GPU of the node visible and takes cuda:LOCAL_RANK (tfkd's init_distributed).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from tfkd_cli.training import engine

        recipe = resolve(recipe_file, [f"runtime.threads={threads}"])
        try:
            engine.train(recipe, Path(out), resume=True, progress=False, log=lambda m: print(m, flush=True))
        except Exception as e:
            # By name: SIGTERM (scancel) stopped the run after a checkpoint; it is resumable.
            if type(e).__name__ != "Interrupted":
                raise
            print(f"tfkd: {e}", flush=True)
            return "interrupted"
        return "finished"

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(), *args, **kwargs)


def read_record(run: Path) -> dict:
    try:
        return json.loads((Path(run) / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_record(run: Path, rec: dict) -> None:
    rundir.atomic_write_text(Path(run) / RECORD, json.dumps(rec, indent=2) + "\n")


def stderr_tail(rec: dict, n: int = 3) -> str:
    err = Path(rec.get("stderr", ""))
    if not err.is_file():
        return "(no stderr)"
    # submitit's log lines and srun's "task 0: Exited" say less than the run's own last words
    lines = [ln for ln in err.read_text(errors="replace").splitlines()
             if ln.strip() and "submitit" not in ln and not ln.startswith("srun: ")]
    return " | ".join(ln.strip() for ln in lines[-n:]) or "(empty stderr)"


def job_result(rec: dict) -> Optional[tuple]:
    """submitit's result pickle of the job: ("success", value) or ("error", traceback)."""
    p = Path(rec.get("folder", "")) / f"{rec.get('job_id')}_0_result.pkl"
    try:
        with open(p, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError):
        return None


class Submitter:
    """Submits runs with submitit and records each job id in its run directory."""

    def __init__(self, o: SlurmOptions, runs_dir: Path, is_active: Callable[[str], bool]):
        import submitit

        self.o, self.runs_dir, self.is_active = o, Path(runs_dir).resolve(), is_active
        self.submitit = submitit

    def submit(self, p: PlannedRun) -> dict:
        """Submit `p`, unless a job of it is already queued or running (another reproduce's): then attach."""
        import fcntl

        lock = self.runs_dir / ".slurm" / "submit.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # one check-and-submit at a time across reproduce processes
            rec = read_record(p.dir)
            if rec.get("job_id") and self.is_active(rec["job_id"]):
                return rec
            return self._submit(p, rec)

    def _submit(self, p: PlannedRun, rec: dict) -> dict:
        o = self.o
        folder = self.runs_dir / ".slurm" / p.dir.name
        ex = self.submitit.SlurmExecutor(folder=folder, max_num_timeout=1000)
        params = dict(time=o.time, ntasks_per_node=o.tasks, cpus_per_task=max(1, o.cpus_per_run // o.tasks),
                      job_name=f"tfkd-{p.name}", setup=list(o.setup), stderr_to_stdout=False)
        for k in ("partition", "account", "qos", "mem"):
            if getattr(o, k):
                params[k] = getattr(o, k)
        if o.gpus_per_run:
            params["gpus_per_node"] = o.gpus_per_run
        ex.update_parameters(**params)
        p.dir.mkdir(parents=True, exist_ok=True)
        recipe_file = self.runs_dir / ".plans" / f"{p.dir.name}.yaml"
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_text(recipe_file, dump(p.recipe))
        threads = max(1, o.cpus_per_run // o.tasks)
        try:
            job = ex.submit(TrainJob(), str(recipe_file), str(p.dir), threads)
        except Exception as e:  # submitit raises a bare Exception with sbatch's stderr
            raise TfkdError(f"sbatch refused {p.name}: {str(e).strip().splitlines()[-1]}") from None
        rec = {**rec, "job_id": str(job.job_id), "folder": str(folder), "submissions": rec.get("submissions", 0) + 1,
               "stderr": str(job.paths.stderr), "state": "submitted", "submitted_at": time.time()}
        write_record(p.dir, rec)
        return rec
