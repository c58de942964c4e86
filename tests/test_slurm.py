"""`reproduce --executor slurm` against a real single-node Slurm (tests/slurm_cluster.py), no mocks.

- Bad input: one line, exit 2, nothing submitted (unknown partition, a GPU request on a
  partition without GPUs, a runs folder the nodes cannot see, no sbatch on PATH, a bad
  cluster.yaml, resources Slurm refuses).
- The smoke table3 end to end through Slurm, with the faults it must survive: the first
  `reproduce` is stopped (Ctrl-C) after submitting, `--status` shows the jobs, a second one
  re-attaches without submitting anything twice; one job is killed with scancel mid-run (the
  run is resubmitted and resumes from its checkpoint), another gets SIGUSR2 as at a time limit
  or preemption (submitit requeues it under the same job id, and it resumes).
- A failed job (NaN loss) is reported with its stderr tail, left alone, and rerun by
  --retry-failed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[slurm]')")
from tfkd_cli.cli.main import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE_RUNS = 13
TIMEOUT = 3600  # the smoke table through Slurm: a few minutes on 2 idle cores; >25 min under a load of 25


def _env(cluster, **extra) -> dict:
    return {**os.environ, **cluster.env, "PYTHONPATH": str(ROOT), **extra}


def _cmd(runs: Path, *extra: str) -> list[str]:
    # --no-controls: the table's own 13 runs (the controls are ordinary runs; tests/test_controls.py)
    return [sys.executable, "-m", "tfkd_cli", "reproduce", "table3", "--scale", "smoke", "--no-controls",
            "--executor", "slurm", "--runs-dir", str(runs), "--out", str(runs.parent / "results"), "--slurm-cpus-per-run", "1",
            "--slurm-time", "30", *extra]


def _run(cmd: list[str], env: dict, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _jobs(cluster) -> list[str]:
    r = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], env=_env(cluster), capture_output=True, text=True)
    return r.stdout.split()


def _record(run: Path) -> dict:
    return json.loads((run / "slurm.json").read_text())


def _epochs_done(run: Path) -> int:
    try:
        with open(run / "metrics.csv") as f:
            return len(list(csv.DictReader(f)))
    except OSError:
        return 0


def _state(cluster, job: str) -> str:
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], env=_env(cluster),
                       capture_output=True, text=True)
    return r.stdout.strip()


def _fail(cluster, monkeypatch, args: list, **env) -> str:
    """The real CLI in-process against the cluster (fast: no interpreter start-up): one line, exit 2."""
    for k, v in {**cluster.env, **env}.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert isinstance(r.exception, SystemExit) and r.exit_code == 2, f"{r.exception!r}\n{r.output}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfkd: error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["--slurm-partition", "nope"], "Slurm refuses partition nope: sbatch: error: invalid partition specified: nope"),
    (["--slurm-gpus-per-run", "1"], "--slurm-gpus-per-run 1: partition debug has no GPUs"),
    (["--slurm-partition", "remote"], "which the nodes of partition remote (ghost) cannot see; the runs folder "
                                      "must be on a filesystem the nodes share"),
    (["--slurm-mem", "100G"], "Slurm refuses the job options (--time=30 --ntasks-per-node=1 --cpus-per-task=1 "
                              "--mem=100G): allocation failure: Requested node configuration is not available"),
    (["--slurm-time", "x"], "Invalid value for '--slurm-time'"),
])
def test_bad_input_submits_nothing(slurm_cluster, tmp_path, monkeypatch, args, says):
    before = _jobs(slurm_cluster)
    line = _fail(slurm_cluster, monkeypatch, _cmd(tmp_path / "runs", *args)[3:])
    print(line)
    assert says in line
    assert _jobs(slurm_cluster) == before
    assert not (tmp_path / "runs").exists()


def test_no_sbatch_and_bad_cluster_file(slurm_cluster, tmp_path, monkeypatch):
    line = _fail(slurm_cluster, monkeypatch, _cmd(tmp_path / "runs")[3:], PATH="/nonexistent")
    assert line == ("tfkd: error: --executor slurm: no sbatch on PATH; run reproduce on a Slurm login node "
                    "(after `module load slurm` where the cluster needs it)")
    monkeypatch.undo()  # PATH back
    bad = tmp_path / "cluster.yaml"
    bad.write_text("partition: debug\ngpus: 2\n")
    line = _fail(slurm_cluster, monkeypatch, _cmd(tmp_path / "runs", "--cluster", str(bad))[3:])
    assert line.startswith("tfkd: error: --cluster: unknown option(s) gpus; allowed: partition")
    line = _fail(slurm_cluster, monkeypatch, ["reproduce", "table3", "--slurm-partition", "debug"])
    assert line == "tfkd: error: --cluster and --slurm-* options need --executor slurm"


def _wait_for(what: str, ok, proc=None, timeout: float = TIMEOUT, log: Path = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = ok()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"reproduce exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log.read_text() if log else ""))
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # trains runs through Slurm (26-270 s); kept out of the quick loop
def test_smoke_table_through_slurm_with_faults(slurm_cluster, tmp_path):
    env = _env(slurm_cluster)
    runs = tmp_path / "runs"
    # 1. The first reproduce submits the five runs without teachers, then is stopped (Ctrl-C).
    log1 = tmp_path / "first.log"
    t0 = time.time()
    with open(log1, "w") as fh:
        first = subprocess.Popen(_cmd(runs), env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    _wait_for("five submissions", lambda: len(list(runs.glob("*/slurm.json"))) == 5, first, log=log1)
    _wait_for("the submit lines", lambda: log1.read_text().count("submit ") >= 5, first, log=log1)
    first.send_signal(signal.SIGINT)
    # A bound on liveness, not a timing: after Ctrl-C the process still asks Slurm about its jobs,
    # and under load (CI at stop 28: load ~3.5) that took over 60 s.
    assert first.wait(600) == 130
    out1 = log1.read_text()
    assert "5 job(s) stay on the cluster: run the same command again to re-attach" in out1, out1
    submitted = {d.name: _record(d)["job_id"] for d in runs.glob("*/") if (d / "slurm.json").exists()}

    # 2. --status lists every run, the submitted ones with their job ids; it starts nothing.
    st = _run(_cmd(runs, "--status"), env, timeout=120)
    assert st.returncode == 0, st.stderr
    print(st.stdout)
    for job in submitted.values():
        assert f"job {job} (" in st.stdout or f"job {job}" in st.stdout
    assert f"{SMOKE_RUNS - 5} pending" in st.stdout
    assert len(list(runs.glob("*/slurm.json"))) == 5

    # 3. A second reproduce re-attaches, then one job is killed with scancel mid-run and another
    #    is sent SIGUSR2 (time limit / preemption): both runs resume and the table finishes.
    log2 = tmp_path / "second.log"
    with open(log2, "w") as fh:
        second = subprocess.Popen(_cmd(runs), env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    faults: dict[str, str] = {}

    def mid_run():
        for d in sorted(runs.glob("*/")):
            rec = (d / "slurm.json").exists() and _record(d)
            if rec and d.name not in faults and 1 <= _epochs_done(d) <= 3 and \
                    _state(slurm_cluster, rec["job_id"]) == "RUNNING":
                return d
        return None

    for how in ("scancel", "usr2"):
        d = _wait_for(f"a run in mid-training for {how}", mid_run, second, log=log2)
        job = _record(d)["job_id"]
        sig = [] if how == "scancel" else ["--signal=USR2"]
        subprocess.run(["scancel", *sig, job], env=env, check=True)
        faults[d.name] = how
        print(f"{how}: job {job} of {d.name} after {_epochs_done(d)} epochs")
    assert second.wait(TIMEOUT) == 0, log2.read_text()
    out2 = log2.read_text()
    print(out2)
    print(f"smoke table3 through Slurm: {time.time() - t0:.0f} s from the first submission to the table, "
          "with one stop, one scancel and one requeue")
    assert "attach " in out2
    killed = next(n for n, h in faults.items() if h == "scancel")
    assert "ended before the run finished: resubmitting (1/3), it resumes from its last checkpoint" in out2

    # Every run finished; no run was submitted twice but the one scancel killed.
    dirs = [d for d in runs.glob("*/") if not d.name.startswith(".")]
    assert len(dirs) == SMOKE_RUNS
    for d in dirs:
        s = json.loads((d / "summary.json").read_text())
        rec = _record(d)
        assert s["status"] == "finished", d
        assert rec["submissions"] == (2 if d.name == killed else 1), (d.name, rec)
        if d.name in faults:
            assert s["resumes"] >= 1, (d.name, faults[d.name], s)
        if d.name in submitted and d.name != killed:
            assert rec["job_id"] == submitted[d.name]  # re-attached (and requeued in place), not resubmitted
    assert _record(runs / killed)["kills"] == 1
    assert (tmp_path / "results" / "table.json").is_file()

    # 4. Run again: everything is done, nothing is submitted; --status says finished.
    before = _jobs(slurm_cluster)
    r = _run(_cmd(runs), env)
    assert r.returncode == 0 and f"{SMOKE_RUNS} runs: {SMOKE_RUNS} already done, 0 on the cluster, 0 to submit" in r.stderr
    assert _jobs(slurm_cluster) == before
    st = _run(_cmd(runs, "--status"), env, timeout=120)
    assert st.stdout.strip().endswith(f"{SMOKE_RUNS} finished"), st.stdout


@pytest.mark.slow  # trains runs through Slurm (26-270 s); kept out of the quick loop
def test_failed_job_reported_then_retried(slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    cmd = _cmd(runs, "--only", "resnet18")
    r = _run(cmd, _env(slurm_cluster, TFKD_FAULT_NAN="0:2"))  # the job's loss is NaN at step 2
    print(r.stderr)
    assert r.returncode == 0, r.stderr
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("FAILED resnet18@s0")]
    assert failed and "non-finite" in failed[0] and "(log: " in failed[0] and "_0_log.err)" in failed[0], r.stderr
    run = next(d for d in runs.glob("resnet18_*"))
    st = _run(cmd + ["--status"], _env(slurm_cluster), timeout=120)
    assert "failed" in st.stdout and "_0_log.err" in st.stdout, st.stdout
    before = _jobs(slurm_cluster)
    r = _run(cmd, _env(slurm_cluster))
    assert "1 runs: 1 already done" in r.stderr and _jobs(slurm_cluster) == before, r.stderr
    r = _run(cmd + ["--retry-failed"], _env(slurm_cluster))
    assert r.returncode == 0 and "done   resnet18@s0" in r.stderr, r.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert _record(run)["submissions"] == 2


@pytest.mark.slow  # trains runs through Slurm (26-270 s); kept out of the quick loop
def test_ddp_run_in_one_job(slurm_cluster, tmp_path):
    """Two tasks of one job train one run under DDP (gloo on the CPU), with torchrun's environment
    from submitit: the run is written once, by rank 0, and says world_size 2."""
    runs = tmp_path / "runs"
    r = _run(_cmd(runs, "--only", "mobilenetv2", "--slurm-tasks-per-run", "2", "--slurm-cpus-per-run", "2"),
             _env(slurm_cluster))
    assert r.returncode == 0 and "done   mobilenetv2@s0" in r.stderr, r.stderr
    run = next(runs.glob("mobilenetv2_*"))
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "finished" and s["world_size"] == 2, s
    assert _epochs_done(run) == 5
    script = next((runs / ".slurm" / run.name).glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --cpus-per-task=1" in script
