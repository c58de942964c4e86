"""Crash safety: real training processes killed (SIGKILL via TFKD_FAULT), interrupted
(SIGINT/SIGTERM), locked and failed (NaN), then resumed; a resumed run must end with the
same weights (torch.equal) and the byte-identical metrics.csv as an uninterrupted one.

Runs are tiny (digits, width 0.125, one CPU thread so that a busy machine stays fast and the
numbers do not depend on its load); one uninterrupted reference run per config is shared.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tfkd_cli.storage import checkpoint as ckpt_io
from tfkd_cli.training import runtime
from tfkd_cli.storage import rundir
from tfkd_cli.cli.main import cli

from conftest import DIGITS, ROOT, cli_cmd, cli_env, run_cli

pytestmark = pytest.mark.slow  # real training processes: minutes; deselect with -m "not slow"

COMMON = DIGITS
# 1,437 images / batch 64 = 23 steps per epoch; mid-epoch checkpoints after steps 5, 10, 15, 20.
TEACHER = ["train-teacher", *COMMON, "--epochs", "3", "--checkpoint-every", "5"]
# mobilenetv2 KD student of the reference teacher; mid-epoch checkpoints after steps 7, 14, 21.
STUDENT = ["distill", "--student", "mobilenetv2", *COMMON, "--epochs", "2", "--checkpoint-every", "7"]
# googlenet has Dropout2d: exact resume needs the global RNG state. 160 images / 32 = 5 steps.
DROPOUT = ["train-teacher", "--model", "googlenet", *COMMON, "--epochs", "2", "--per-class", "16",
           "--batch-size", "32", "--checkpoint-every", "2"]
TIMEOUT = 300


def tfkd(args: list, out: Path, *, fault: str | None = None, resume: bool = False,
         check_rc: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tfkd_cli ARGS --out OUT` to its end (or its fault)."""
    env = cli_env(**({"TFKD_FAULT": fault} if fault else {}))
    p = run_cli([*args, "--out", out] + (["--resume"] if resume else []), env=env, timeout=TIMEOUT)
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc {p.returncode} (want {check_rc}) for {fault}:\n{p.stderr}"
    return p


def killed(args: list, out: Path, fault: str, resume: bool = True) -> subprocess.CompletedProcess:
    return tfkd(args, out, fault=fault, resume=resume, check_rc=-signal.SIGKILL)


def state_of(path: Path) -> tuple[int, int]:
    s = ckpt_io.load(path)["state"]
    return s["epoch"], s["step"]


def assert_same_run(ref: Path, run: Path) -> None:
    """Same final weights (bit for bit) and the byte-identical metrics.csv."""
    a, b = ckpt_io.load(ref / rundir.LAST), ckpt_io.load(run / rundir.LAST)
    assert a["model"].keys() == b["model"].keys()
    diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
    assert (ref / rundir.METRICS).read_bytes() == (run / rundir.METRICS).read_bytes()
    assert (ref / rundir.BEST).is_file() and (run / rundir.BEST).is_file()
    best_a, best_b = ckpt_io.load(ref / rundir.BEST), ckpt_io.load(run / rundir.BEST)
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    s = rundir.read_summary(run)
    assert s["status"] == "finished"
    assert not (run / rundir.LOCK).exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], "temp files left behind"
    # timings.csv is informational, but it must stay a well-formed table.
    rows = list(csv.DictReader(open(run / "timings.csv")))
    assert rows and all(set(r) == {"epoch", "train_s", "images_per_s"} for r in rows)


@pytest.fixture(scope="module")
def ref_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "teacher"
    tfkd(TEACHER, out, check_rc=0)
    return out


@pytest.fixture(scope="module")
def ref_student(tmp_path_factory, ref_teacher) -> Path:
    out = tmp_path_factory.mktemp("ref") / "student"
    tfkd([*STUDENT, "--teacher", ref_teacher], out, check_rc=0)
    return out


# --------------------------------------------------------------------------- SIGKILL + resume


def test_killed_many_times_resumes_exactly(ref_teacher, tmp_path):
    run = tmp_path / "run"
    # 1. Inside the atomic write of the mid-epoch checkpoint after step 10: last.pt keeps step 5.
    killed(TEACHER, run, "checkpoint_write:2", resume=False)
    assert state_of(run / rundir.LAST) == (0, 5)
    assert [p.name for p in run.iterdir() if p.name.startswith(".last.pt.")], "expected an orphan temp file"
    # the mid-epoch checkpoint books the training time so far (a resumed run's total counts it)
    st = ckpt_io.load(run / rundir.LAST)["state"]
    assert st["train_time"] > 0 and st["run_time"] >= st["train_time"]
    # 2. Resumed; killed inside the write of last.pt at the end of epoch 1, after best.pt was
    #    written (writes: steps 10, 15, 20, best.pt, last.pt): best.pt is ahead of last.pt.
    killed(TEACHER, run, "checkpoint_write:5")
    assert state_of(run / rundir.LAST) == (0, 20)
    assert state_of(run / rundir.BEST) == (1, 0)
    # 3. Resumed at epoch 1 step 20; killed before the 10th step: epoch 2, step index 6.
    killed(TEACHER, run, "step:10")
    assert state_of(run / rundir.LAST) == (1, 5)
    # 4. Killed at the evaluation of epoch 2.
    killed(TEACHER, run, "eval:1")
    assert state_of(run / rundir.LAST) == (1, 20)
    # 5. Killed after epoch 2's last.pt, before metrics.csv: the file is one epoch behind.
    killed(TEACHER, run, "metrics:1")
    assert state_of(run / rundir.LAST) == (2, 0)
    assert len(rundir.read_metrics(run)) == 1
    # 6. Lock files of the dead processes are taken over; the run completes identically.
    p = tfkd(TEACHER, run, resume=True, check_rc=0)
    assert "took over the lock" in p.stderr
    assert_same_run(ref_teacher, run)
    s = rundir.read_summary(run)
    assert s["resumes"] == 5 and s["epochs_done"] == 3 and s["train_time_s"] > 0
    # run time (training + evaluation + checkpoints) is booked across all six sessions
    assert s["run_time_s"] >= s["train_time_s"]


def test_kd_student_killed_resumes_exactly(ref_teacher, ref_student, tmp_path):
    run = tmp_path / "student"
    args = [*STUDENT, "--teacher", ref_teacher]
    killed(args, run, "step:19", resume=False)  # epoch 1 step index 18: last.pt after step 14
    assert state_of(run / rundir.LAST) == (0, 14)
    killed(args, run, "checkpoint_write:3")  # after step 21, best.pt, then killed writing last.pt
    assert state_of(run / rundir.LAST) == (0, 21)
    killed(args, run, "eval:1")  # epoch 1 evaluation (again)
    tfkd(args, run, resume=True, check_rc=0)
    assert_same_run(ref_student, run)
    assert rundir.read_summary(run)["teacher"]["sha256"] == ckpt_io.sha256(ref_teacher / rundir.BEST)


def test_dropout_model_resumes_exactly(tmp_path):
    """googlenet's Dropout2d draws from the global torch RNG: its state must come back exactly."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    tfkd(DROPOUT, ref, check_rc=0)
    killed(DROPOUT, run, "step:9", resume=False)  # epoch 2 step index 3: last.pt after step 2
    assert state_of(run / rundir.LAST) == (1, 2)
    tfkd(DROPOUT, run, resume=True, check_rc=0)
    assert_same_run(ref, run)


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    runtime.seed_everything(123)
    torch.rand(5), np.random.rand(3), random.random()
    ckpt_io.save(tmp_path / "c.pt", {"rng": runtime.rng_state()})
    want = (torch.rand(7), np.random.rand(7), [random.random() for _ in range(7)])
    runtime.seed_everything(0)
    runtime.set_rng_state(ckpt_io.load(tmp_path / "c.pt")["rng"])
    got = (torch.rand(7), np.random.rand(7), [random.random() for _ in range(7)])
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


# --------------------------------------------------------------------------- SIGINT / SIGTERM


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> None:
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, f"process ended before {what}: {proc.communicate()[1]}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_and_resume_is_exact(ref_teacher, tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_cmd([*TEACHER, "--out", run]), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / rundir.LAST).is_file(), proc, "the first checkpoint")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    epoch, step = state_of(run / rundir.LAST)
    assert (epoch, step) != (3, 0), "the run finished before the signal"
    assert rundir.read_summary(run)["status"] == "interrupted"
    assert not (run / rundir.LOCK).exists()
    p = tfkd(TEACHER, run, resume=True, check_rc=0)
    assert f"resuming {run} at epoch {epoch + 1} step {step}" in p.stderr
    assert_same_run(ref_teacher, run)


# --------------------------------------------------------------------------- lock


def test_second_process_on_a_run_refuses(ref_teacher, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_cmd([*TEACHER, "--out", run]), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = run / rundir.LOCK
        _wait_for(lambda: lock.is_file() and lock.read_text().startswith(f"{proc.pid} "), proc, "the lock")
        assert rundir.is_locked(run)
        for extra in ([], ["--resume"], ["--overwrite"]):
            r = CliRunner().invoke(cli, [*TEACHER, "--out", str(run), *extra])
            assert r.exit_code == 2, r.output
            assert r.stderr.strip() == r.stderr.strip().splitlines()[0]
            assert r.stderr.startswith(f"tfkd: error: run {run} is in use by process {proc.pid} on "), r.stderr
        assert lock.read_text().startswith(f"{proc.pid} ")
        assert proc.wait(timeout=TIMEOUT) == 0, proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_same_run(ref_teacher, run)
    assert not rundir.is_locked(run)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / rundir.LOCK).write_text(f"{dead.pid} {socket.gethostname()}\n")
    assert not rundir.is_locked(run) and rundir.RunLock(run).is_stale()
    r = CliRunner().invoke(cli, ["train-teacher", *COMMON, "--epochs", "1", "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert f"took over the lock of process {dead.pid}" in r.stderr
    assert not (run / rundir.LOCK).exists()
    assert rundir.read_summary(run)["status"] == "finished"


def test_lock_is_exclusive_within_and_across_handles(tmp_path):
    a, b = rundir.RunLock(tmp_path), rundir.RunLock(tmp_path)
    assert a.acquire() is None
    with pytest.raises(Exception, match=f"in use by process {os.getpid()} on"):
        b.acquire()
    a.release()
    assert not (tmp_path / rundir.LOCK).exists()
    b.acquire()
    assert rundir.is_locked(tmp_path)
    b.release()


# --------------------------------------------------------------------------- NaN


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # Epoch 1 trains normally; from epoch 2 the lr is multiplied by 1e30: the loss overflows.
    args = ["train-teacher", *COMMON, "--epochs", "3", "--set", "optim.milestones=[1]",
            "--set", "optim.gamma=1.0e+30", "--out", str(run)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 3, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    assert err.startswith("tfkd: run failed: non-finite loss at epoch 2 step "), err
    assert str(run / rundir.LAST) in err
    s = rundir.read_summary(run)
    assert s["status"] == "failed" and s["error"] in err
    ck = ckpt_io.load(run / rundir.LAST)
    assert (ck["state"]["epoch"], ck["state"]["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert len(rundir.read_metrics(run)) == 1
    assert not (run / rundir.LOCK).exists()
    # Resuming it meets the same fault again, from the same good checkpoint.
    before = (run / rundir.LAST).read_bytes()
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 3 and "non-finite loss at epoch 2 step" in r.stderr
    assert (run / rundir.LAST).read_bytes() == before


def test_summary_records_determinism_flag(tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train-teacher", *COMMON, "--epochs", "1", "--deterministic", "--out", str(run)])
    assert r.exit_code == 0, r.output
    s = json.loads((run / rundir.SUMMARY).read_text())
    assert s["deterministic"] is True and s["device"] == "cpu"
    # the flag is process-wide: a later run in the same process without it turns it off
    r = CliRunner().invoke(cli, ["train-teacher", *COMMON, "--epochs", "1", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and not torch.are_deterministic_algorithms_enabled()


def test_resume_from_a_checkpoint_without_run_time_reports_it_unknown(tmp_path):
    """A checkpoint written before tfkd recorded run time: the resumed run cannot know its
    whole run time, so its summary says null rather than the resumed part only."""
    run = tmp_path / "run"
    args = ["train-teacher", *COMMON, "--epochs", "2", "--per-class", "8", "--batch-size", "32"]
    killed(args, run, "eval:2", resume=False)  # epoch 1 checkpointed, killed at epoch 2's evaluation
    ck = ckpt_io.load(run / rundir.LAST)
    for k in ("run_time", "run_time_known"):
        ck["state"].pop(k)
    ckpt_io.save(run / rundir.LAST, ck)
    tfkd(args, run, resume=True, check_rc=0)
    s = rundir.read_summary(run)
    assert s["status"] == "finished" and s["run_time_s"] is None and s["train_time_s"] > 0
