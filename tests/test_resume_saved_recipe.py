"""`--resume --out DIR` alone resumes with the run's saved recipe; flags that disagree with it
are refused naming the field, flags that agree with it or only say how to run are accepted."""

from __future__ import annotations

import json

import pytest

from conftest import DIGITS, cli_env, fail, run_cli


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
