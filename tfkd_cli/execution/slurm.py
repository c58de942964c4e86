"""The Slurm executor: each run of a plan is one Slurm job, placed by submitit.

tfkd's plan, run summaries and run locks stay the source of truth; Slurm only places the runs.
- A run is submitted when its teachers have finished (not with `afterok` dependencies): a
  teacher killed and resubmitted gets a new job id, which would leave `afterok` students
  pending forever, and "finished" means summary.json says so, not that a job exited 0.
- Each submission is recorded in the run directory (slurm.json: job id, submissions, kills),
  so a second `reproduce` re-attaches to jobs still queued or running and never submits a run
  twice.
- A job that ends without finishing its run (scancel, node failure, time limit or preemption
  that submitit could not requeue in place) is resubmitted and resumes from the run's last
  checkpoint with tfkd's exact resume, up to MAX_KILLS times. On SIGUSR2 (sent before the time
  limit, and by preemption) submitit checkpoints the job function and requeues it under the
  same job id; the run then resumes from its last epoch (or --checkpoint-every) checkpoint.
- A run that raised (a NaN loss, a crash) is failed: reported with its stderr tail, and left
  alone until `--retry-failed`.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import yaml

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.tables.plan import PlannedRun, unique_runs
from tfkd_cli.execution.runner import BLOCKED, EXTERNAL, FAILED, FINISHED, dir_status, status_of, weights_needed
from tfkd_cli.execution.slurm_job import SlurmOptions, Submitter, job_result, read_record, stderr_tail, write_record

MAX_KILLS = 3  # resubmissions of a run whose job was killed before it finished
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs", "f2fs", "vfat", "devtmpfs"}
INSTALL = "--executor slurm needs submitit: pip install -e \".[slurm]\" (or pip install submitit)"


def load_options(cluster_file: Optional[str], flags: dict) -> SlurmOptions:
    """Defaults < cluster.yaml < --slurm-* flags given; a bad key or value is a one-line error."""
    data: dict = {}
    if cluster_file:
        p = Path(cluster_file)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except OSError as e:
            raise TfkdError(f"--cluster {p}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise TfkdError(f"--cluster {p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise TfkdError(f"--cluster {p}: expected a mapping of Slurm options")
        data = {k.replace("-", "_"): v for k, v in data.items()}
    data.update({k: v for k, v in flags.items() if v not in (None, ())})
    known = {f.name: f for f in fields(SlurmOptions)}
    unknown = set(data) - set(known)
    if unknown:
        raise TfkdError(f"--cluster: unknown option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(known)}")
    if isinstance(data.get("setup"), str):
        data["setup"] = [data["setup"]]
    for k, v in data.items():
        want = int if k in ("time", "gpus_per_run", "cpus_per_run", "tasks_per_run", "max_parallel") else None
        if want and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise TfkdError(f"slurm option {k} must be a whole number >= 0, got {v!r}")
        if k == "setup" and not (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)):
            raise TfkdError(f"slurm option setup must be shell lines (a list of strings), got {v!r}")
    opts = SlurmOptions(**{**data, "setup": list(data.get("setup", []))})
    if opts.time < 1 or opts.cpus_per_run < 1:
        raise TfkdError("slurm options time and cpus_per_run must be >= 1")
    return opts


# -- Slurm commands ------------------------------------------------------------------


def _slurm(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise TfkdError(f"{cmd[0]} failed: {e}") from None


def _first_error(r: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return (errs or lines or [f"exit {r.returncode}"])[0]


def _sbatch_flags(o: SlurmOptions) -> list[str]:
    flags = [f"--time={o.time}", f"--ntasks-per-node={o.tasks}", f"--cpus-per-task={max(1, o.cpus_per_run // o.tasks)}"]
    for name, v in (("partition", o.partition), ("account", o.account), ("qos", o.qos), ("mem", o.mem)):
        if v:
            flags.append(f"--{name}={v}")
    if o.gpus_per_run:
        flags.append(f"--gpus-per-node={o.gpus_per_run}")
    return flags


def check(o: SlurmOptions, runs_dir: Path) -> None:
    """Everything that would make a submission fail, checked before any job is submitted."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise TfkdError(INSTALL) from None
    if not shutil.which("sbatch"):
        raise TfkdError("--executor slurm: no sbatch on PATH; run reproduce on a Slurm login node "
                        "(after `module load slurm` where the cluster needs it)")
    part = o.partition or _default_partition()
    known = _slurm(["scontrol", "show", "partition", part, "-o"])
    if known.returncode != 0:  # Slurm's own words for an unknown partition
        r = _slurm(["sbatch", "--test-only", *_sbatch_flags(o), "--wrap", "true"])
        raise TfkdError(f"Slurm refuses partition {part}: {_first_error(r if r.returncode else known)}")
    check_shared(runs_dir, part, _partition_nodes(known.stdout))
    if o.gpus_per_run:
        gres = [g for g in _slurm(["sinfo", "-h", "-p", part, "-o", "%G"]).stdout.split() if g != "(null)"]
        if not any("gpu" in g for g in gres):
            raise TfkdError(f"--slurm-gpus-per-run {o.gpus_per_run}: partition {part} has no GPUs "
                            f"(its nodes' GRES: {', '.join(gres) or 'none'}); choose a GPU partition or drop the flag")
    r = _slurm(["sbatch", "--test-only", *_sbatch_flags(o), "--wrap", "true"])
    if r.returncode != 0:  # account, QOS, time, memory, CPUs: Slurm's own message
        raise TfkdError(f"Slurm refuses the job options ({' '.join(_sbatch_flags(o))}): {_first_error(r)}")


def check_shared(runs_dir: Path, part: str, nodes: list[str]) -> None:
    """The runs folder must be visible from the nodes: fine when they are all this host."""
    host = socket.gethostname().split(".")[0]
    others = [n for n in nodes if n.split(".")[0] != host]
    if not others:
        return
    fs = _fs_type(Path(runs_dir).resolve())
    if fs in LOCAL_FS:
        raise TfkdError(f"--runs-dir {runs_dir} is on a local {fs} filesystem of {host}, which the nodes of "
                        f"partition {part} ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''}) cannot see; "
                        "the runs folder must be on a filesystem the nodes share (NFS, Lustre, GPFS, ...)")


def _default_partition() -> str:
    for p in _slurm(["sinfo", "-h", "-o", "%P"]).stdout.split():
        if p.endswith("*"):
            return p[:-1]
    raise TfkdError("the cluster has no default partition; pass --slurm-partition")


def _partition_nodes(show_partition: str) -> list[str]:
    spec = next((w.split("=", 1)[1] for w in show_partition.split() if w.startswith("Nodes=")), "")
    if not spec or spec == "(null)":
        return []
    return _slurm(["scontrol", "show", "hostnames", spec]).stdout.split()


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount holding `path` (from /proc/mounts: the longest prefix)."""
    best, fs = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                best, fs = mnt, parts[2]
    except OSError:
        pass
    return fs


def queue_states() -> dict[str, str]:
    """job id -> state of this user's jobs Slurm still knows."""
    r = _slurm(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T"])
    if r.returncode != 0:
        raise TfkdError(f"squeue failed: {_first_error(r)}")
    return dict(ln.split("|", 1) for ln in r.stdout.split() if "|" in ln)


# -- the job -------------------------------------------------------------------------


@dataclass
class Tracker:
    """One run's place on the cluster while the plan waits."""

    run: PlannedRun
    rec: dict


def classify(p: PlannedRun, rec: dict) -> tuple[str, str]:
    """What became of a run whose job left the queue: (finished|failed|killed, detail)."""
    st = dir_status(p)  # a run trained again beside its record finishes here, not in the record
    if st == FINISHED:
        return FINISHED, ""
    if st == FAILED:  # the run's own message (a NaN loss) and the end of its stderr
        err = (rundir.read_summary(p.dir) or {}).get("error")
        return FAILED, (f"{err}; stderr ends: " if err else "") + stderr_tail(rec, 1)
    res = job_result(rec)
    if res and res[0] == "error" and "UncompletedJobError" not in str(res[1]):
        return FAILED, stderr_tail(rec)
    return "killed", ""


def run_state(p: PlannedRun, queue: dict[str, str]) -> tuple[str, str]:
    """(state, detail) for --status and re-attaching: pending, queued, running, finished, failed, ..."""
    st = status_of(p)
    rec = read_record(p.dir) if not p.external else {}
    jid = rec.get("job_id")
    if st == EXTERNAL:
        return "external", str(p.release)
    if st == FINISHED:
        return FINISHED, f"job {jid}" if jid else ""
    if jid and queue.get(jid) in ACTIVE:
        q = queue[jid]
        return ("running" if q in ("RUNNING", "COMPLETING", "CONFIGURING") else "queued"), f"job {jid} ({q})"
    if rundir.is_locked(p.dir):
        return "running", "on " + ((rundir.RunLock(p.dir).owner() or (0, "?"))[1]) + (f", job {jid}" if jid else "")
    if st == FAILED or rec.get("state") == FAILED:
        return FAILED, f"log {rec.get('stderr') or p.dir}"
    if jid:
        return "stopped", f"job {jid} ended before the run finished; resumes when reproduce runs"
    return "pending", ""


def status_table(plan: list[PlannedRun], with_queue: bool = True) -> str:
    """Every run's state; with `with_queue`, Slurm's word on the jobs recorded in the run directories."""
    from tabulate import tabulate

    queue = queue_states() if with_queue and shutil.which("squeue") else {}
    rows = [[p.name, *run_state(p, queue), p.dir.name] for p in unique_runs(plan)]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    return tabulate(rows, headers=["run", "state", "detail", "run dir"]) + "\n\n" + \
        ", ".join(f"{n} {s}" for s, n in counts.items())


def run_plan(plan: list[PlannedRun], o: SlurmOptions, runs_dir: Path, *, retry_failed: bool = False,
             log: Callable[[str], None] = print, poll: float = 2.0,
             on_finished: Optional[Callable[[PlannedRun], None]] = None) -> dict[Path, str]:
    """Submit every pending run when its teachers finish, wait for all; returns run dir -> status.
    `on_finished(run)` is called as soon as a run submitted here finishes."""
    check(o, runs_dir)
    sub = Submitter(o, runs_dir, lambda jid: queue_states().get(jid) in ACTIVE)
    runs = unique_runs(plan)
    by_key = {(p.id, p.seed): p for p in plan}
    state: dict[Path, str] = {}
    active: dict[Path, Tracker] = {}
    queue = queue_states()
    again = {q.dir for q in weights_needed(plan)}  # finished elsewhere; a student needs the weights
    for p in runs:
        st, _ = run_state(p, queue) if p.dir not in again else ("pending", "")
        rec = read_record(p.dir) if not p.external else {}
        if st in ("queued", "running", "stopped"):  # a stopped job is classified on the first pass
            active[p.dir] = Tracker(p, rec)
            if st != "stopped":
                log(f"attach {p.name:28s} job {rec['job_id']} ({queue[rec['job_id']]})")
        elif st == FAILED and retry_failed:
            write_record(p.dir, {**rec, "state": "retry", "kills": 0})
        elif st in (FINISHED, FAILED, "external"):
            state[p.dir] = st
    todo = [p for p in runs if p.dir not in state and p.dir not in active]
    log(f"{len(runs)} runs: {len(state)} already done, {len(active)} on the cluster, {len(todo)} to submit")
    try:
        _wait(todo, active, state, by_key, sub, o, log, poll, len(runs), on_finished or (lambda p: None))
    except KeyboardInterrupt:
        if active:
            log(f"stopped waiting; {len(active)} job(s) stay on the cluster: run the same command again to "
                "re-attach (scancel them to stop them)")
        raise
    return state


def _wait(todo: list, active: dict, state: dict, by_key: dict, sub: Submitter, o: SlurmOptions,
          log: Callable[[str], None], poll: float, total: int, on_finished: Callable[[PlannedRun], None]) -> None:
    with _progress(total, log) as bar:
        while todo or active:
            queue = queue_states()
            for d, t in list(active.items()):
                if queue.get(t.rec["job_id"]) in ACTIVE:
                    continue
                del active[d]
                what, detail = classify(t.run, t.rec)
                kills = t.rec.get("kills", 0) + (what == "killed")
                if what == "killed" and kills <= MAX_KILLS:
                    write_record(d, {**t.rec, "state": "killed", "kills": kills})
                    t.rec = read_record(d)
                    log(f"killed {t.run.name:28s} job {t.rec['job_id']} ended before the run finished: resubmitting "
                        f"({kills}/{MAX_KILLS}), it resumes from its last checkpoint")
                    todo.insert(0, t.run)
                    continue
                if what == "killed":
                    what, detail = FAILED, f"killed {kills} times without finishing; {stderr_tail(t.rec)}"
                state[d] = what
                write_record(d, {**t.rec, "state": what})
                if what == FINISHED:
                    on_finished(t.run)
                    best = ((rundir.read_summary(d) or {}).get("best") or {}).get("top1")
                    log(f"done   {t.run.name:28s} job {t.rec['job_id']}  best top-1 {best}")
                else:
                    log(f"FAILED {t.run.name:28s} job {t.rec['job_id']}: {detail} (log: {t.rec.get('stderr')})")
            for p in list(todo):
                if o.max_parallel and len(active) >= o.max_parallel:
                    break
                dep_states = [state.get(by_key[k].dir) for k in p.deps]
                if any(s in (FAILED, BLOCKED) for s in dep_states):
                    todo.remove(p)
                    state[p.dir] = BLOCKED
                    log(f"blocked {p.name}: a teacher run failed")
                elif all(s in (FINISHED, EXTERNAL, "external") for s in dep_states):
                    todo.remove(p)
                    old = read_record(p.dir).get("job_id")
                    rec = sub.submit(p)
                    active[p.dir] = Tracker(p, rec)
                    log(f"{'submit' if rec['job_id'] != old else 'attach'} {p.name:28s} job {rec['job_id']}")
            bar(state, active, queue)
            if todo or active:
                time.sleep(poll)


class _progress:
    """A rich progress line (runs done of all, what is queued and running); quiet off a terminal."""

    def __init__(self, total: int, log: Callable[[str], None]):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self.p = Progress(TextColumn("slurm"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn(), console=console, disable=not console.is_terminal)
        self.task = self.p.add_task("", total=total)

    def __enter__(self):
        self.p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.p.stop()

    def __call__(self, state: dict, active: dict, queue: dict) -> None:
        running = sum(1 for t in active.values() if queue.get(t.rec["job_id"]) == "RUNNING")
        failed = sum(1 for s in state.values() if s in (FAILED, BLOCKED))
        self.p.update(self.task, completed=len(state),
                      description=f"{running} running, {len(active) - running} queued, {failed} failed")
