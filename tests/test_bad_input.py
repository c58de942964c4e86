"""Bad input: every user error is one line `tfkd: error: ...` on stderr, a non-zero exit (2),
no traceback, and nothing already written is lost.

Most cases run in-process through click's CliRunner (fast); a few run the real
`python -m tfkd_cli` to make sure nothing else (warnings, tracebacks) reaches stderr.
The message shapes are listed in docs/errors.md.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tfkd_cli.storage import checkpoint as ckpt_io
from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.models import build_model

from conftest import DIGITS, TEACH, cli_env, dump, fail, make_layout, run_cli, snapshot, synthetic_batch

COMMON = [*DIGITS, "--epochs", "1"]


# --------------------------------------------------------------------------- recipes


RECIPE_CASES = {
    "malformed-yaml": ("model: [resnet18\nwidth: 0.5\n", [], "malformed YAML at line"),
    "yaml-python-tag": ("model: !!python/object/apply:os.system ['echo hi']\n", [], "refused YAML tag"),
    "not-a-mapping": ("- a\n- b\n", [], "a recipe must be a mapping"),
    "unknown-key-file": ("optim:\n  lrr: 0.1\n", [], "unknown recipe key 'optim.lrr'"),
    "unknown-key-set": ("", ["--set", "train.epoch=3"], "unknown recipe key 'train.epoch'"),
    "unknown-section": ("trainer:\n  epochs: 3\n", [], "unknown recipe key 'trainer'"),
    "wrong-type-file": ("train:\n  batch_size: three\n", [], "train.batch_size: expected int, got 'three'"),
    "wrong-type-set": ("", ["--set", "optim.lr=abc"], "optim.lr: expected float, got 'abc'"),
    "wrong-type-bool": ("", ["--set", "data.augment=3"], "data.augment: expected bool, got 3"),
    "wrong-type-list": ("", ["--set", "optim.milestones=5"], "optim.milestones: expected list of int"),
    "negative-lr-set": ("", ["--set", "optim.lr=-0.1"], "optim.lr must be > 0 (got -0.1)"),
    "negative-lr-flag": ("", ["--lr", "-0.1"], "optim.lr must be > 0 (got -0.1)"),
    "zero-lr-file": ("optim:\n  lr: 0\n", [], "optim.lr must be > 0 (got 0.0)"),
    "alpha-above-1": ("", ["--set", "loss.alpha=1.5"], "loss.alpha must be in [0, 1] (got 1.5)"),
    "alpha-below-0": ("", ["--set", "loss.alpha=-0.1"], "loss.alpha must be in [0, 1] (got -0.1)"),
    "temperature-0": ("", ["--set", "loss.temperature=0"], "loss.temperature must be > 0 (got 0.0)"),
    "temperature-negative": ("loss:\n  temperature: -4\n", [], "loss.temperature must be > 0 (got -4.0)"),
    "epochs-0": ("", ["--epochs", "0"], "train.epochs must be > 0 (got 0)"),
    "batch-negative": ("", ["--batch-size", "-8"], "train.batch_size must be > 0 (got -8)"),
    "width-0": ("", ["--width", "0"], "width must be > 0 (got 0.0)"),
    "unknown-model": ("", ["--model", "resnet19"], "model:"),
    "set-without-equals": ("", ["--set", "optim.lr"], "expected key=value"),
}


@pytest.mark.parametrize("text,extra,expect", RECIPE_CASES.values(), ids=RECIPE_CASES.keys())
def test_recipe_errors(run, tmp_path, text, extra, expect):
    """Bad recipes fail before anything in --out changes (even with --resume on a finished run)."""
    before = snapshot(run)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    line = fail([*TEACH, *(["--recipe", recipe] if text else []), *extra, "--out", run, "--resume"])
    assert expect in line, line
    if text:
        assert str(recipe) in line  # the message names the file
    assert snapshot(run) == before


def test_recipe_file_not_found(tmp_path):
    line = fail([*TEACH, "--recipe", tmp_path / "nope.yaml", "--out", tmp_path / "out"])
    assert line == f"tfkd: error: recipe file not found: {tmp_path / 'nope.yaml'}"
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- data


def test_missing_dataset_files(run, tmp_path):
    before = snapshot(run)
    empty = tmp_path / "data"
    empty.mkdir()
    line = fail(["train-teacher", "--dataset", "cifar100", "--data-root", empty, "--quiet", "--out", tmp_path / "out"])
    assert f"CIFAR-100 not found under {empty}" in line and "--download" in line
    assert not (tmp_path / "out").exists()
    # and with --overwrite on an existing run: the old run survives the failure
    line = fail(["train-teacher", "--dataset", "cifar100", "--data-root", empty, "--quiet", "--out", run, "--overwrite"])
    assert "CIFAR-100 not found" in line
    assert snapshot(run) == before


def test_missing_cifar_layout_folder(tmp_path):
    line = fail(["train-teacher", "--dataset", "cifar-layout", "--data-root", tmp_path / "nope", "--quiet",
                 "--out", tmp_path / "out"])
    assert f"cifar-layout folder {tmp_path / 'nope'} not found" in line


def test_corrupt_dataset_pickle(tmp_path):
    d = make_layout(tmp_path / "layout", n_train=96, n_test=24)
    raw = (d / "train").read_bytes()
    (d / "train").write_bytes(raw[: len(raw) // 2])
    line = fail(["train-teacher", "--dataset", "cifar-layout", "--data-root", d, "--quiet", "--out", tmp_path / "out"])
    assert f"corrupt or truncated pickle {d / 'train'}" in line


def test_corrupt_dataset_archive(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    line = fail(["train-teacher", "--dataset", "cifar100", "--data-root", root, "--quiet", "--out", tmp_path / "out"])
    assert f"corrupt or truncated archive {root / 'cifar-100-python.tar.gz'}" in line


def test_out_of_range_labels(tmp_path):
    d = make_layout(tmp_path / "layout", n_train=96, n_test=24, num_classes=12)
    b = synthetic_batch(96, 12, 1)
    b["fine_labels"][7] = 12  # 12 classes: labels 0..11
    dump(d / "train", b)
    line = fail(["train-teacher", "--dataset", "cifar-layout", "--data-root", d, "--quiet", "--out", tmp_path / "out"])
    assert f"{d / 'train'}: label 12 at index 7 is out of range; expected 0..11 (12 classes)" in line
    b["fine_labels"][7] = -1
    dump(d / "train", b)
    assert "label -1 at index 7 is out of range" in fail(
        ["train-teacher", "--dataset", "cifar-layout", "--data-root", d, "--quiet", "--out", tmp_path / "out"])


# --------------------------------------------------------------------------- output directory


def test_out_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me\n")
    line = fail([*TEACH, "--out", blocker / "run"])
    assert line == f"tfkd: error: cannot create run directory {blocker / 'run'}: Not a directory"
    assert blocker.read_text() == "keep me\n"


def test_out_is_a_regular_file_engine(tmp_path):
    from tfkd_cli.training.engine import train
    from tfkd_cli.errors import TfkdError
    from tfkd_cli.config.recipe import resolve_run

    f = tmp_path / "file"
    f.write_text("keep me\n")
    with pytest.raises(TfkdError, match="^--out .* exists and is not a directory$"):
        train(resolve_run(overrides={"data": {"dataset": "digits"}}), f)
    assert f.read_text() == "keep me\n"


# click validates some options itself (types of flags, --out being a file, unknown options);
# cli.py maps its usage errors to the same one-line shape.
CLICK_USAGE_CASES = {
    "out-is-a-file": lambda t: [*TEACH, "--out", t / "file"],
    "flag-wrong-type": lambda t: [*TEACH, "--epochs", "abc", "--out", t / "o"],
    "unknown-option": lambda t: [*TEACH, "--bogus", "--out", t / "o"],
}


@pytest.mark.parametrize("case", CLICK_USAGE_CASES.values(), ids=CLICK_USAGE_CASES.keys())
def test_click_usage_errors(tmp_path, case):
    (tmp_path / "file").write_text("keep me\n")
    fail(case(tmp_path))
    assert (tmp_path / "file").read_text() == "keep me\n"


def _chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_read_only_output_directory(tmp_path):
    """A directory nobody may write to (immutable: even root cannot create files in it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("keep\n")
    if not _chattr("+i", ro):
        pytest.skip("chattr +i is not available here")
    try:
        try:
            (ro / "probe").write_text("")
            pytest.skip("chattr +i does not stop writes here")
        except OSError:
            pass
        line = fail([*TEACH, "--out", ro])  # the directory itself is read-only
        assert line.startswith(f"tfkd: error: cannot write to run directory {ro}: ") and "Operation not permitted" in line
        line = fail([*TEACH, "--out", ro / "sub"])  # a new run directory inside it
        assert line == f"tfkd: error: cannot create run directory {ro / 'sub'}: Operation not permitted"
    finally:
        _chattr("-i", ro)
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]


def test_finished_run_without_resume_or_overwrite(run):
    before = snapshot(run)
    line = fail([*TEACH, "--out", run])
    assert line == (f"tfkd: error: {run} already holds a finished run; use --resume to keep it, "
                    "--overwrite to replace it, or another --out")
    assert snapshot(run) == before


def test_unfinished_run_without_resume(run):
    s = rundir.read_summary(run)
    rundir.write_summary(run, {**s, "status": "interrupted"})
    before = snapshot(run)
    line = fail([*TEACH, "--out", run])
    assert line == f"tfkd: error: {run} already holds a run; use --resume to continue it or --overwrite to replace it"
    assert snapshot(run) == before


def test_resume_with_another_recipe(run):
    before = snapshot(run)
    line = fail([*TEACH, "--set", "optim.lr=0.05", "--out", run, "--resume"])
    assert f"{run / 'last.pt'} was written by another recipe (hash " in line and "--overwrite" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "bare-state-dict", "newer-version"])
def test_resume_from_a_bad_checkpoint(run, damage):
    last = run / rundir.LAST
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:5000])
        expect = f"corrupt or truncated checkpoint {last}: "
    elif damage == "empty":
        last.write_bytes(b"")
        expect = f"corrupt or truncated checkpoint {last}: the file is empty"
    elif damage == "garbage":
        last.write_bytes(random.Random(0).randbytes(4096))  # seeded: no 0x80 or PK head by chance
        expect = f"corrupt checkpoint {last}: not a readable PyTorch file"
    elif damage == "bare-state-dict":
        torch.save(ckpt_io.load(last)["model"], last)
        expect = f"{last} is not a resumable tfkd checkpoint"
    else:
        ck = ckpt_io.load(last)
        torch.save({**ck, "version": 99}, last)
        expect = f"{last}: checkpoint format version 99 is not one this tfkd reads"
    before = snapshot(run)
    line = fail([*TEACH, "--out", run, "--resume"])
    assert expect in line, line
    assert snapshot(run) == before


def test_run_of_another_model_refused_on_resume(run):
    """A last.pt whose weights belong to another model (and recipe) never loads silently."""
    last = run / rundir.LAST
    ck = ckpt_io.load(last)
    ck["model"] = build_model("mobilenetv2", num_classes=10, width=0.125).state_dict()
    torch.save(ck, last)
    before = snapshot(run)
    line = fail([*TEACH, "--out", run, "--resume"])
    assert f"{last} does not fit this run's resnet18: " in line and "missing key(s)" in line
    assert snapshot(run) == before


# --------------------------------------------------------------------------- teachers


def test_teacher_of_another_architecture(run, tmp_path):
    before = snapshot(run)
    line = fail(["distill", "--student", "mobilenetv2", *COMMON, "--teacher", run, "--teacher-model", "resnet50",
                 "--out", tmp_path / "s"])
    assert line == f"tfkd: error: {run / 'best.pt'} holds a resnet18, not a resnet50"
    assert snapshot(run) == before and not (tmp_path / "s").exists()


def test_official_teacher_checkpoint_that_does_not_fit(tmp_path):
    f = tmp_path / "best.pth.tar"
    torch.save({"state_dict": build_model("mobilenetv2", num_classes=10).state_dict(), "epoch": 3}, f)
    line = fail(["distill", "--student", "mobilenetv2", *COMMON, "--teacher", f, "--teacher-model", "resnet18",
                 "--out", tmp_path / "s"])
    assert line.startswith(f"tfkd: error: {f} does not fit model resnet18 (width 1.0, 10 classes): ")


def test_teacher_class_count_differs_from_dataset(run, tmp_path):
    d = make_layout(tmp_path / "layout", n_train=96, n_test=24, num_classes=12)
    line = fail(["distill", "--student", "mobilenetv2", "--dataset", "cifar-layout", "--data-root", d, "--quiet",
                 "--teacher", run, "--out", tmp_path / "s"])
    assert line == f"tfkd: error: {run / 'best.pt'} is a 10-class resnet18; the dataset has 12 classes"


def test_truncated_teacher_checkpoint(run, tmp_path):
    best = run / rundir.BEST
    best.write_bytes(best.read_bytes()[:3000])
    line = fail(["distill", "--student", "mobilenetv2", *COMMON, "--teacher", run, "--out", tmp_path / "s"])
    assert line.startswith(f"tfkd: error: corrupt or truncated checkpoint {best}: ")


def test_missing_teacher(tmp_path):
    line = fail(["distill", "--student", "mobilenetv2", *COMMON, "--teacher", tmp_path / "nope", "--out", tmp_path / "s"])
    assert line.startswith(f"tfkd: error: not found: {tmp_path / 'nope'} ")
    assert fail(["distill", "--student", "mobilenetv2", *COMMON, "--out", tmp_path / "s"]) == \
        "tfkd: error: distill needs --teacher (a run directory or a checkpoint)"


def test_overwrite_with_a_bad_teacher_keeps_the_old_run(run, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(run, student)
    before = snapshot(student)
    fail(["distill", "--student", "mobilenetv2", *COMMON, "--teacher", run, "--teacher-model", "vgg8",
          "--out", student, "--overwrite"])
    assert snapshot(student) == before


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "text"])
def test_evaluate_corrupt_checkpoint(finished_run, tmp_path, damage):
    f = tmp_path / "model.pt"
    raw = (finished_run / rundir.LAST).read_bytes()
    f.write_bytes({"truncated": raw[: len(raw) // 3], "empty": b"", "garbage": random.Random(1).randbytes(3000),
                   "text": b"model: resnet18\n"}[damage])
    line = fail(["evaluate", f, "--dataset", "digits", "--device", "cpu"])
    assert line.startswith((f"tfkd: error: corrupt or truncated checkpoint {f}: ", f"tfkd: error: corrupt checkpoint {f}: "))


@pytest.mark.parametrize("head", [b"Xgfk", b"c__b", b"\x93\x00", b"\xd8\xff", b"model: "])
def test_garbage_is_never_read_as_a_pickle(tmp_path, head):
    """Random bytes used to be classified by whatever torch's unpickler made of their first
    bytes ("needs arbitrary unpickling", a UTF-8 decode error): ~2% of os.urandom files."""
    f = tmp_path / "x.pt"
    f.write_bytes(head + random.Random(2).randbytes(2000))
    with pytest.raises(TfkdError) as e:
        ckpt_io.load(f)
    assert str(e.value) == f"corrupt checkpoint {f}: not a readable PyTorch file"


def test_evaluate_run_with_truncated_best(run):
    best = run / rundir.BEST
    best.write_bytes(best.read_bytes()[:-10])
    line = fail(["evaluate", run, "--device", "cpu"])
    assert line.startswith(f"tfkd: error: corrupt or truncated checkpoint {best}: ")


def test_evaluate_checkpoint_of_another_model(finished_run):
    line = fail(["evaluate", finished_run / rundir.LAST, "--model", "mobilenetv2", "--dataset", "digits", "--device", "cpu"])
    assert line == f"tfkd: error: {finished_run / 'last.pt'} holds a resnet18, not a mobilenetv2"


def test_evaluate_missing_target(tmp_path):
    assert fail(["evaluate", tmp_path / "nope"]).startswith(f"tfkd: error: not found: {tmp_path / 'nope'}")


def test_evaluate_refuses_code_in_a_checkpoint(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    f = tmp_path / "evil.pt"
    torch.save({"state_dict": Boom()}, f)
    line = fail(["evaluate", f, "--model", "resnet18", "--dataset", "digits", "--device", "cpu"])
    assert line.startswith(f"tfkd: error: refused to load {f}: it needs arbitrary unpickling")


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow  # trains real CLI runs for 15-30 s; kept out of the quick loop
def test_real_process_prints_one_line(finished_run, tmp_path):
    """The same contract end to end: nothing else (warnings, tracebacks) reaches stderr."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [\n")
    trunc = tmp_path / "t.pt"
    trunc.write_bytes((finished_run / rundir.LAST).read_bytes()[:999])
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (["train-teacher", "--recipe", bad, "--out", tmp_path / "a"], "malformed YAML"),
        (["evaluate", trunc, "--dataset", "digits", "--device", "cpu"], "corrupt or truncated checkpoint"),
        ([*TEACH, "--out", blocker / "x"], "cannot create run directory"),
        ([*TEACH, "--out", finished_run], "already holds a finished run"),
    ]
    before = snapshot(finished_run)
    env = cli_env()
    for args, expect in cases:
        p = run_cli(args, env=env, timeout=120)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfkd: error: ") and expect in lines[0], p.stderr
        assert "Traceback" not in p.stdout + p.stderr
    assert snapshot(finished_run) == before
