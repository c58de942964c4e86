"""A run's identity: it holds only the loss parameters its method reads, and a run directory
written before identity version 2 (tests/data/v1_runs) is still found, finished and resumable
under its old name."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tfkd_cli.methods import METHODS
from tfkd_cli.config.recipe import from_dict, recipes_dir
from tfkd_cli.tables.plan import build_plan
from tfkd_cli.execution.runner import status_of
from tfkd_cli.tables.spec import load_scale, load_table

V1 = Path(__file__).parent / "data" / "v1_runs"
V1_RUN = "mobilenetv2_ce_s0_73571c3c3f"


def test_identity_holds_only_the_parameters_the_method_reads():
    for name, m in METHODS.items():
        over = {"method": name, "teacher": {"path": "t"} if m.needs_teacher else {}}
        assert set(from_dict(over).identity()["loss"]) == set(m.defaults)
    ce = from_dict({})
    assert ce.identity()["loss"] == {}
    assert from_dict({"loss": {"alpha": 0.5, "epsilon": 0.3}}).hash() == ce.hash()
    lsr = from_dict({"method": "lsr"})
    assert from_dict({"method": "lsr", "loss": {"alpha": 0.5}}).hash() == lsr.hash()
    assert from_dict({"method": "lsr", "loss": {"epsilon": 0.3}}).hash() != lsr.hash()


# -- runs written before identity version 2 --------------------------------------------

def _v1_plan(runs: Path):
    return build_plan(load_table("tfkd-reg-cifar100"), load_scale(str(V1 / "v1tiny.yaml")), [0], runs,
                      only={"mobilenetv2"})


def test_v1_run_dir_is_still_finished(tmp_path):
    shutil.copytree(V1 / V1_RUN, tmp_path / V1_RUN)
    (p,) = _v1_plan(tmp_path)
    assert p.dir.name == V1_RUN and p.key != p.legacy_key
    assert status_of(p) == "finished"
    assert json.loads((p.dir / "summary.json").read_text())["recipe_hash"] == p.recipe.legacy_hash() != p.recipe.hash()
    (q,) = _v1_plan(tmp_path / "empty")  # without the old dir, a new run gets the new key
    assert q.dir.name.endswith(q.key)


def test_v1_run_dir_resumes(tmp_path):
    run = tmp_path / V1_RUN
    shutil.copytree(V1 / V1_RUN, run)
    s = json.loads((run / "summary.json").read_text())
    s["status"] = "running"  # as if killed before it wrote its final summary
    (run / "summary.json").write_text(json.dumps(s))
    recipes = tmp_path / "recipes"
    shutil.copytree(recipes_dir(), recipes)
    env = {**os.environ, "TFKD_RECIPES": str(recipes)}
    p = subprocess.run([sys.executable, "-m", "tfkd_cli", "reproduce", "tfkd-reg-cifar100", "--scale",
                        str(V1 / "v1tiny.yaml"), "--only", "mobilenetv2", "--runs-dir", str(tmp_path),
                        "--out", str(tmp_path / "res")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all 1 epochs are done" in p.stderr
    (plan,) = _v1_plan(tmp_path)
    assert status_of(plan) == "finished" and plan.dir == run
    assert json.loads((run / "summary.json").read_text())["recipe_hash"] == plan.recipe.hash()
