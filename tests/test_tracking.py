"""TensorBoard and W&B on request: the event files and the offline W&B run files are read back
and hold the epoch metrics and the lr per step; a resumed run continues the same stream with
no step twice; the trackers never change a run's identity or numbers; a missing package is
one line. W&B runs offline only (WANDB_MODE=offline, or no API key), with its files in tmp."""

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfkd_cli.storage import rundir
from tfkd_cli.training import tracking
from tfkd_cli.cli.main import cli
from tfkd_cli.training.loop import lr_at
from tfkd_cli.config.recipe import resolve

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5  # 160 images / batch 32
TINY = ["train-teacher", "--dataset", "digits", "--per-class", "16", "--batch-size", "32", "--width", "0.125",
        "--quiet", "--device", "cpu", "--set", "runtime.threads=1"]


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B's own folders in tmp, and no API key anywhere it looks."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "WANDB_CONFIG_DIR": str(home / "cfg"), "WANDB_CACHE_DIR": str(home / "cache"),
           "WANDB_DATA_DIR": str(home / "data"), "NETRC": str(home / "netrc")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return env


def events(run: Path) -> dict:
    """TensorBoard's own reader: {tag: [(step, value), ...]} and the recipe text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / tracking.TB_DIR))
    ea.Reload()
    out = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    out["recipe"] = [e.tensor_proto.string_val[0].decode() for e in ea.Tensors("recipe/text_summary")]
    return out


def wandb_records(path: Path):
    """The records of an offline run file (.wandb): a W&B header, then LevelDB-log records
    (32 KiB blocks; 7-byte headers crc32c, length, type) holding wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, part = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(part + chunk if kind == 4 else chunk)
            part = b""
            yield rec
        elif kind == 2:  # first
            part = chunk
        else:  # middle
            part += chunk


def wandb_history(run: Path) -> tuple[set, list[dict], list[dict]]:
    """Run ids, history rows (in order, across the run's sessions) and configs of a run's offline W&B files."""
    ids, rows, configs = set(), [], []
    for f in sorted(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))):
        for rec in wandb_records(Path(f)):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                ids.add(rec.run.run_id)
                configs.append({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return ids, rows, configs


def check_stream(run: Path, scalars: dict, epochs: int) -> None:
    """Each step once, in order; the lr of every step; the epoch rows equal metrics.csv."""
    recipe = resolve(run / rundir.RECIPE)
    lr = scalars["step/lr"]
    assert [s for s, _ in lr] == list(range(1, epochs * STEPS + 1))
    for s, v in lr:
        assert v == pytest.approx(lr_at(recipe, (s - 1) // STEPS + 1, (s - 1) % STEPS, STEPS), rel=1e-6)
    for row in rundir.read_metrics(run):
        for col, text in row.items():
            if col != "epoch":
                got = [v for s, v in scalars[f"epoch/{col}"] if s == int(row["epoch"]) * STEPS]
                assert got == [pytest.approx(float(text), rel=1e-6)], col
    assert {len(scalars[t]) for t in scalars if t.startswith("epoch/")} == {epochs}


def test_trackers_read_back_and_change_nothing(tmp_path, wandb_home, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    plain, tracked = tmp_path / "plain", tmp_path / "tracked"
    for out, extra in ((plain, []), (tracked, ["--tensorboard", "--wandb", "tfkd-test"])):
        r = CliRunner().invoke(cli, [*TINY, "--epochs", "2", *extra, "--out", str(out)])
        assert r.exit_code == 0, r.stdout + r.stderr
    # Runtime settings only: the same numbers, the same identity.
    assert (tracked / rundir.METRICS).read_bytes() == (plain / rundir.METRICS).read_bytes()
    assert rundir.read_summary(tracked)["recipe_hash"] == rundir.read_summary(plain)["recipe_hash"]
    assert not (plain / tracking.TB_DIR).exists() and not (plain / "wandb").exists()

    ev = events(tracked)
    check_stream(tracked, ev, epochs=2)
    assert len(ev["recipe"]) == 1 and "    tensorboard: true" in ev["recipe"][0] and "    model: resnet18" in ev["recipe"][0]

    ids, rows, configs = wandb_history(tracked)
    assert ids == {json.loads((tracked / tracking.WANDB_ID).read_text())["id"]}
    assert configs[0]["model"] == "resnet18" and configs[0]["runtime"]["wandb"] == "tfkd-test"
    check_stream(tracked, _by_step(rows), epochs=2)
    assert [r["epoch"] for r in rows if "epoch" in r] == [1, 2]


def _by_step(rows: list[dict]) -> dict:
    """W&B history rows -> {key: [(step, value)]}, each step's values as logged (one row per step)."""
    steps = [r["_step"] for r in rows]
    assert len(steps) == len(set(steps)), "a step logged twice"
    out: dict = {}
    for r in rows:
        for k, v in r.items():
            if not k.startswith("_") and k != "epoch":
                out.setdefault(k, []).append((r["_step"], v))
    return out


def _tfkd(args: list, out: Path, env: dict, fault: str = "", resume: bool = False,
          clean: bool = False) -> subprocess.CompletedProcess:
    """`python -m tfkd_cli ARGS --out OUT` with no terminal; `clean`: `env` is the whole environment."""
    env = {**(env if clean else {**os.environ, **env}), "TFKD_FAULT": fault}
    env.pop("WANDB_SERVICE", None)  # a W&B service this pytest process started is not the child's
    cmd = [sys.executable, "-m", "tfkd_cli", *map(str, args), "--out", str(out)] + (["--resume"] if resume else [])
    return subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)


def test_tensorboard_resume_after_a_kill_has_each_step_once(tmp_path):
    """Killed while writing epoch 2's checkpoint: its events are on disk, last.pt is still
    epoch 1's. The resumed run redoes epoch 2; the stream read back holds every step once."""
    out = tmp_path / "tb"
    args = [*TINY, "--epochs", "3", "--tensorboard"]
    # checkpoint writes: epoch 1 best.pt + last.pt, then epoch 2's first file
    p = _tfkd(args, out, {}, fault="checkpoint_write:3")
    assert p.returncode == -signal.SIGKILL, p.stderr
    stale = events(out)
    assert [s for s, _ in stale["epoch/test_top1"]] == [STEPS, 2 * STEPS]  # epoch 2's row is on disk
    p = _tfkd(args, out, {}, resume=True)
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stderr and "epoch 2 step 0" in p.stderr
    ev = events(out)
    check_stream(out, ev, epochs=3)
    assert len(ev["recipe"]) == 1


def test_wandb_resume_continues_the_same_run_and_never_asks_for_a_key(tmp_path, wandb_home):
    """No WANDB_MODE and no API key: W&B logs offline (one note) instead of prompting. Stopped
    by SIGTERM after its first epoch (the run checkpoints and closes W&B), the resumed run is
    the same W&B run and continues after the checkpoint: each step once, every epoch row.
    (A SIGKILL can also lose what W&B's own service had not yet written; tfkd cannot flush it.)"""
    env = {**{k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SERVICE")},
           **wandb_home, "TFKD_FAULT": ""}
    out = tmp_path / "wb"
    args = [*TINY, "--epochs", "3", "--wandb", "tfkd-test"]
    cmd = [sys.executable, "-m", "tfkd_cli", *map(str, args), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not rundir.read_metrics(out):
            assert proc.poll() is None and time.time() - t0 < 300, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "note: no W&B API key here" in err and "logging offline" in err
    assert len(rundir.read_metrics(out)) < 3, "the run finished before the signal"
    first = json.loads((out / tracking.WANDB_ID).read_text())["id"]
    p = _tfkd(args, out, env, resume=True, clean=True)
    assert p.returncode == 0 and "resuming" in p.stderr, p.stderr
    assert json.loads((out / tracking.WANDB_ID).read_text())["id"] == first
    ids, rows, _ = wandb_history(out)
    assert ids == {first} and len(glob.glob(str(out / "wandb" / "offline-run-*"))) == 2
    check_stream(out, _by_step(rows), epochs=3)


@pytest.mark.parametrize("flag, package", [(["--tensorboard"], "tensorboard"), (["--wandb", "p"], "wandb")])
def test_a_missing_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch, flag, package):
    monkeypatch.setitem(sys.modules, package, None)  # what an environment without it looks like to find_spec
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*TINY, "--epochs", "1", *flag, "--out", str(out)])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert "\n" not in line and f"needs the {package} package: pip install {package}" in line
    assert not out.exists()


def test_empty_wandb_project_is_refused(tmp_path):
    r = CliRunner().invoke(cli, [*TINY, "--wandb", " ", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "runtime.wandb must be a W&B project name" in r.stderr


def test_runtime_settings_stay_out_of_the_identity():
    a = resolve(None, [])
    b = resolve(None, ["runtime.tensorboard=true", "runtime.wandb=proj"])
    assert b.runtime.tensorboard and b.runtime.wandb == "proj"
    assert a.identity() == b.identity() and a.hash() == b.hash()
