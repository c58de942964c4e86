"""What a new user tripped over (issue #24): `--resume --out DIR` alone resumes with the saved
recipe, flags that disagree with it are refused naming the field, every recipe layer is
validated, and streamed folder sets start no more DataLoader workers than there are cores."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from tfkd_cli.data import DataSpec, build_data

from conftest import DIGITS, cli_env, fail, run_cli
from test_folder_data import make_folder


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory):
    """A finished 1-epoch tfkd_reg run made with non-default flags (the ones a resume would need)."""
    out = tmp_path_factory.mktemp("resume") / "r"
    p = run_cli(["train-teacher", *DIGITS, "--method", "tfkd_reg", "--set", "loss.alpha=0.1",
                 "--set", "loss.multiplier=100", "--epochs", "1", "--batch-size", "32", "--out", out])
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.slow  # trains real CLI runs (the quick loop stays under 3 min)
def test_resume_with_only_out_takes_the_saved_recipe(reg_run):
    before = json.loads((reg_run / "summary.json").read_text())
    p = run_cli(["train-teacher", "--resume", "--out", reg_run, "--quiet", "--device", "cpu"], env=cli_env())
    assert p.returncode == 0, p.stderr
    assert "all 1 epochs are done" in p.stderr
    after = json.loads((reg_run / "summary.json").read_text())
    assert (after["recipe_hash"], after["method"], after["best"]) == (before["recipe_hash"], "tfkd_reg", before["best"])


@pytest.mark.parametrize("flags,field", [(["--epochs", "3"], "train.epochs is 1"),
                                         (["--set", "loss.alpha=0.5"], "loss.alpha is 0.1"),
                                         (["--method", "lsr"], "method is 'tfkd_reg'"),
                                         (["--batch-size", "64"], "train.batch_size is 32")])
def test_resume_refuses_flags_that_disagree_with_the_saved_recipe(reg_run, flags, field):
    line = fail(["train-teacher", "--resume", "--out", reg_run, *flags])
    assert f"{reg_run}/last.pt was written by another recipe (hash " in line
    assert f": {field} in {reg_run}/recipe.yaml, but this command gives" in line


@pytest.mark.slow  # trains real CLI runs (the quick loop stays under 3 min)
def test_resume_accepts_agreeing_and_runtime_flags(reg_run):
    p = run_cli(["train-teacher", "--resume", "--out", reg_run, "--method", "tfkd_reg", "--set", "loss.alpha=0.1",
                 "--device", "cpu", "--set", "runtime.threads=1", "--quiet"], env=cli_env())
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("text,flags,want", [
    ("train: {epochs: three}\n", ["--epochs", "2"], "train.epochs: expected int, got 'three'"),
    ("train: {epochs: -1}\n", ["--set", "train.epochs=2"], "train.epochs must be > 0 (got -1)"),
    ("loss: {alpha: 2}\n", ["--set", "loss.alpha=0.5"], "loss.alpha must be in [0, 1] (got 2.0)"),
])
def test_a_bad_value_in_a_recipe_file_is_refused_even_when_overridden(tmp_path, text, flags, want):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    line = fail(["train-teacher", "--dataset", "digits", "--recipe", f, *flags, "--dry-run"])
    assert line == f"tfkd: error: {f}: {want}"


def test_a_bad_set_value_is_refused_even_when_a_flag_overrides_it():
    line = fail(["train-teacher", "--dataset", "digits", "--set", "train.epochs=0", "--epochs", "2", "--dry-run"])
    assert line == "tfkd: error: --set: train.epochs must be > 0 (got 0)"


def test_streamed_folder_starts_at_most_one_worker_per_core(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, per_class={"train": 4, "val": 1}, size=16)
    data = build_data(DataSpec("folder", root, batch_size=4, workers=64, memory_mb=0))
    assert type(data).__name__ == "FolderData"
    assert data.workers == min(64, len(os.sched_getaffinity(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DataLoader's "suggested max number of worker" is a UserWarning
        x, _ = next(iter(data.train_batches(0, 0)))
    assert x.shape == (4, 3, 16, 16)
