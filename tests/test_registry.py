"""Issue #16 parts 2-4: the method and dataset registries are the single source, a run's
identity holds only the loss parameters its method reads, runs written before that change
are still finished and resumable, and `reproduce` takes --scale FILE and --set."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfkd_cli.cli import cli
from tfkd_cli.data.registry import DATASETS
from tfkd_cli.losses import METHODS, PARAMS, build_loss
from tfkd_cli.recipe import LossCfg, Recipe, from_dict, recipes_dir, resolve_run
from tfkd_cli.reproduce import api, cost, render, report
from tfkd_cli.reproduce.plan import build_plan
from tfkd_cli.reproduce.runner import status_of
from tfkd_cli.reproduce.spec import load_scale, load_table

V1 = Path(__file__).parent / "data" / "v1_runs"
V1_RUN = "mobilenetv2_ce_s0_73571c3c3f"


# -- the method registry ---------------------------------------------------------------

def test_losscfg_is_the_registry_parameters():
    """One LossCfg field per parameter; its default is the one every method reading it agrees
    on, else None, and a recipe of each method resolves to that method's own default."""
    assert [f.name for f in dataclasses.fields(LossCfg)] == list(PARAMS)
    for name, m in METHODS.items():
        loss = from_dict({"method": name, "teacher": {"path": "t"} if m.needs_teacher else {}}).loss
        for k, default in m.defaults.items():
            agreed = {o.defaults[k] for o in METHODS.values() if k in o.defaults}
            assert getattr(LossCfg(), k) == (default if len(agreed) == 1 else None), (name, k)
            assert getattr(loss, k) == default, (name, k)
    assert METHODS["tfkd_reg"].defaults["multiplier"] == 100.0  # official base_resnet18, not kd's 1


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


def test_build_loss_takes_the_registry_defaults():
    import torch

    z, y = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    d = METHODS["tfkd_reg"].defaults
    assert build_loss("tfkd_reg")(z, y).item() == build_loss("tfkd_reg", **d)(z, y).item()
    assert build_loss("tfkd_reg", epsilon=0.5)(z, y).item() == build_loss("tfkd_reg")(z, y).item()  # not read


def test_cli_help_lists_the_registries():
    for cmd in ("train-teacher", "distill"):
        out = CliRunner().invoke(cli, [cmd, "--help"]).output
        flat = "".join(out.split())  # help wraps lines (and tiny-imagenet at its hyphen)
        assert all(name in flat for name in DATASETS), out
        assert all(name in flat for name in METHODS), out


def test_commands_take_their_teacher_rule_from_the_registry():
    r = CliRunner().invoke(cli, ["train-teacher", "--method", "kd", "--dry-run"])
    assert r.exit_code == 2 and "kd_self" not in r.output.split("(")[1].split(")")[0]
    assert "ce, tfkd_reg, lsr" in r.output


# -- the dataset registry --------------------------------------------------------------

def test_cost_reads_the_dataset_sizes():
    r = Recipe(model="resnet18", width=0.25)
    r.data.dataset, r.train.epochs = "digits", 2
    r.runtime.fast_eval = False  # the model's own eval forward (fast_eval: test_cost_of_fast_eval)
    info = DATASETS["digits"]
    per_train = cost._seconds_per_image("cpu", "train", "resnet18", 0.25, 10, 32)
    per_eval = cost._seconds_per_image("cpu", "infer", "resnet18", 0.25, 10, 32)
    assert cost.estimate_seconds(r) == pytest.approx(2 * (info.num_train * per_train + info.num_test * per_eval))


def test_cost_of_fast_eval():
    """fast_eval divides the test pass by the measured gain of the folded copy (CPU only)."""
    r = Recipe(model="mobilenetv2", width=0.25)
    r.data.dataset, r.train.epochs = "digits", 1
    per_train = cost._seconds_per_image("cpu", "train", "mobilenetv2", 0.25, 10, 32)
    per_eval = cost._seconds_per_image("cpu", "infer", "mobilenetv2", 0.25, 10, 32)
    info, gain = DATASETS["digits"], cost.CPU_FAST_EVAL_GAIN["mobilenetv2"]
    assert gain > 1
    assert cost.estimate_seconds(r) == pytest.approx(info.num_train * per_train + info.num_test * per_eval / gain)
    r.runtime.fast_eval = False
    assert cost.estimate_seconds(r) == pytest.approx(info.num_train * per_train + info.num_test * per_eval)
    cuda = cost.estimate_seconds(r, "cuda")
    r.runtime.fast_eval = True
    assert cost.estimate_seconds(r, "cuda") == cuda


def test_transforms_come_from_the_record():
    from tfkd_cli.data.reference import official_test_transform, official_train_transform

    for name, info in DATASETS.items():
        train = [type(t).__name__ for t in official_train_transform(name).transforms]
        assert len(train) == len(info.train_transform) + 2 and train[-2:] == ["ToTensor", "Normalize"]
        assert len(official_test_transform(name).transforms) == len(info.test_transform) + 2


# -- one way to layer a recipe ---------------------------------------------------------

def test_imagenet_protocol_is_written_once():
    table = load_table("tfkd-imagenet")
    assert set(table.run_defaults) == {"data"}
    plan = build_plan(table, load_scale("paper"), [0], Path("/tmp/unused"), only={"r18"})
    single = resolve_run(None, ["data.dataset=imagenet", "model=tv:resnet18"])
    r = plan[0].recipe
    assert (r.optim, r.train.epochs, r.train.batch_size, r.train.eval_batch_size) == \
        (single.optim, single.train.epochs, single.train.batch_size, single.train.eval_batch_size) == \
        (r.optim, 90, 512, 256)


def test_reproduce_scale_file_and_set(tmp_path):
    scale = tmp_path / "my_scale.yaml"
    scale.write_text("epoch_factor: 0.01\noverrides:\n  width: 0.125\n")
    sc = load_scale(str(scale))
    assert sc.scale == "my_scale" and sc.epoch_factor == 0.01
    sets = ("data.dataset=cifar10", f"data.root={tmp_path}")
    plan = build_plan(load_table("tfkd-reg-cifar100"), sc, [0], tmp_path / "runs", sets=api.check_sets(sets))
    assert {(p.recipe.data.dataset, p.recipe.data.root, p.recipe.width) for p in plan if p.recipe.model != "resnet50"
            and p.recipe.model != "resnext29_8x64d" and p.recipe.model != "googlenet"} == {("cifar10", str(tmp_path), 0.125)}
    res = report.build_results(load_table("tfkd-reg-cifar100"), sc, plan, [0], sets=list(sets))
    assert res.header.overrides == list(sets)
    assert f"--set, every run): data.dataset=cifar10, data.root={tmp_path}" in render.to_markdown(res)

    out = CliRunner().invoke(cli, ["reproduce", "tfkd-reg-cifar100", "--scale", str(scale), "--dry-run",
                                   "--runs-dir", str(tmp_path / "runs"), "--set", "data.dataset=cifar10"])
    assert out.exit_code == 0, out.output
    assert "--set data.dataset=cifar10" in out.output


@pytest.mark.parametrize("args,expect", [
    (["--scale", "nope"], "unknown scale 'nope' (not a scale name, nor a file)"),
    (["--set", "data.datset=x"], "--set: unknown recipe key 'data.datset'"),
    (["--set", "train.epochs=many"], "--set: train.epochs: expected int, got 'many'"),
    (["--set", "optim.lr"], "expected key=value"),
])
def test_reproduce_bad_scale_or_set_is_one_line(args, expect, tmp_path):
    r = CliRunner().invoke(cli, ["reproduce", "table3", "--dry-run", "--runs-dir", str(tmp_path), *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], r.output


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
