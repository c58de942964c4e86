"""Distributed data parallel on the CPU: two gloo processes under torchrun train one run.

`python -m torch.distributed.run --nproc_per_node 2 -m tfkd_cli train-teacher --dataset digits ...`
must finish; the run directory must be written by rank 0 only (one result line, one row per
epoch in metrics.csv and timings.csv, no stray or temporary files); summary.json must say
world_size 2 and status finished; the accuracy must be far above chance; the checkpoint must
load into a plain (non-DDP) model and reproduce the reported test accuracy.

LR under DDP (see benchmarks/README.md): train.batch_size is the global batch; each of the N
ranks takes batch_size / N of it, so lr = optim.lr * batch_size / 128 is the recipe's, as in a
single-process run.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from tfkd_cli.storage import checkpoint as ckpt_io
from tfkd_cli.storage import rundir
from tfkd_cli.data import build_data
from tfkd_cli.storage.loading import load_model
from tfkd_cli.metrics import evaluate

pytestmark = [pytest.mark.slow,  # real training processes: minutes; deselect with -m "not slow"
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available")]

WORLD = 2
EPOCHS = 2
TIMEOUT = 240  # generous for a loaded machine; an idle 2-core one takes ~20 s
EXPECTED_FILES = {rundir.RECIPE, rundir.METRICS, rundir.SUMMARY, rundir.LAST, rundir.BEST, "timings.csv"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TFKD_FAULT", "TFKD_FAULT_NAN", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                        "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a small machine; torchrun would set it too
    env.update(extra_env or {})
    p = None
    for _ in range(3):  # the free port can be taken between probing and binding: retry
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "tfkd_cli", "train-teacher", "--dataset", "digits", "--epochs", str(EPOCHS),
               "--set", "width=0.125", "--out", str(out), "--quiet", "--device", "cpu"]
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        if p.returncode == 0 or "address already in use" not in (p.stderr + p.stdout).lower():
            return p
    return p


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    out, cwd = base / "run", base / "cwd"
    cwd.mkdir()
    t0 = time.perf_counter()
    p = _torchrun(out, cwd)
    took = time.perf_counter() - t0
    print(f"torchrun {WORLD} x gloo, digits, {EPOCHS} epochs: {took:.1f}s")
    assert p.returncode == 0, \
        f"torchrun exited {p.returncode} after {took:.0f}s\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}"
    return {"out": out, "cwd": cwd, "proc": p, "seconds": took}


def test_ddp_run_finishes_with_world_size_2(ddp_run):
    s = json.loads((ddp_run["out"] / rundir.SUMMARY).read_text())
    assert s["status"] == "finished"
    assert s["world_size"] == WORLD
    assert s["epochs_done"] == EPOCHS
    assert s["dataset"] == "digits" and s["method"] == "ce"


def test_ddp_metrics_one_row_per_epoch(ddp_run):
    with open(ddp_run["out"] / rundir.METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    # train stats are all-reduced over both ranks: the padded shard union covers the whole train set
    for r in rows:
        assert 0.0 <= float(r["train_top1"]) <= 100.0
        assert float(r["train_loss"]) > 0.0
    with open(ddp_run["out"] / "timings.csv", newline="") as f:  # appended: a second writer would double it
        timings = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in timings] == list(range(1, EPOCHS + 1))


def test_ddp_accuracy_well_above_chance(ddp_run):
    s = json.loads((ddp_run["out"] / rundir.SUMMARY).read_text())
    # 10 classes: chance is 10%. Epoch 1 is the lr warm-up; after epoch 2 this run reaches
    # well above chance on torch 2.14 / CPU.
    assert s["best"]["top1"] >= 25.0, s["best"]
    with open(ddp_run["out"] / rundir.METRICS, newline="") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0] - 0.2, losses  # the ranks learned together (DDP averaged gradients)


def test_ddp_global_batch_keeps_the_recipe_lr(ddp_run):
    """64 per rank x 2 ranks = the recipe's batch 64: lr 0.05 = 0.1 x 64/128, as single-process."""
    with open(ddp_run["out"] / rundir.METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["lr"]) == pytest.approx(0.1 * 64 / 128)
    s = json.loads((ddp_run["out"] / rundir.SUMMARY).read_text())
    assert s["world_size"] == 2


def test_only_rank0_wrote_files(ddp_run):
    out = ddp_run["out"]
    names = {p.name for p in out.iterdir()}
    assert names == EXPECTED_FILES, f"unexpected files: {sorted(names ^ EXPECTED_FILES)}"  # no .lock, no temp files
    assert not any(ddp_run["cwd"].iterdir()), "the run wrote files into the working directory"
    # every file is whole: summary and recipe parse, checkpoints load
    json.loads((out / rundir.SUMMARY).read_text())
    assert "model: resnet18" in (out / rundir.RECIPE).read_text()
    for name in (rundir.LAST, rundir.BEST):
        ck = ckpt_io.load(out / name)
        assert ck["format"] == "tfkd" and ck["state"]["epoch"] == ck["epoch"]
    # one process printed the result line (rank 1 returns an empty summary and prints nothing)
    assert ddp_run["proc"].stdout.count("best top-1") == 1, ddp_run["proc"].stdout


def test_ddp_checkpoint_loads_into_a_plain_model(ddp_run):
    out = ddp_run["out"]
    last = ckpt_io.load(out / rundir.LAST)
    assert not any(k.startswith("module.") for k in last["model"]), "DDP wrapper prefix leaked into the checkpoint"
    assert last["epoch"] == EPOCHS
    loaded = load_model(out)  # best.pt, strict load into a freshly built resnet18
    assert loaded.name == "resnet18" and loaded.width == 0.125 and loaded.num_classes == 10
    s = json.loads((out / rundir.SUMMARY).read_text())
    data = build_data("digits", device="cpu")
    test = evaluate(loaded.model.eval(), data.test_batches())
    # the same weights and test set: the same accuracy (up to one image of 360, for thread-count rounding)
    assert test["top1"] == pytest.approx(s["best"]["top1"], abs=100.0 / data.num_test + 1e-6)


def test_nan_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1 alone meets a non-finite loss at step 3: both ranks must stop there (rank 0 would
    otherwise wait forever in the next gradient all-reduce), the run is marked failed with one
    error line, and the last good checkpoint (none yet, in epoch 1) is not overwritten."""
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    p = _torchrun(out, cwd, {"TFKD_FAULT_NAN": "1:3"})  # subprocess timeout: a hang fails the test
    assert p.returncode != 0, p.stdout + p.stderr
    s = json.loads((out / rundir.SUMMARY).read_text())
    assert s["status"] == "failed"
    assert s["error"].startswith("non-finite loss at epoch 1 step 4; stopped before any checkpoint"), s["error"]
    assert "tfkd: run failed: non-finite loss at epoch 1 step 4" in p.stderr
    assert not (out / rundir.LAST).exists() and not (out / rundir.LOCK).exists()
