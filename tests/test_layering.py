"""A run's recipe layers, one order for single runs and table runs
(`tfkd_cli.config.recipe.resolve_layers`): defaults < dataset profile < recipe file or table < scale <
--set < flags. Every layer is validated, also where a higher one overrides it; `reproduce`
takes a scale file and --set as its top layers."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from tfkd_cli.cli.main import cli
from tfkd_cli.config.recipe import resolve_layers, resolve_run
from tfkd_cli.execution import reproduce as api
from tfkd_cli.tables import render
from tfkd_cli.tables import report
from tfkd_cli.tables.plan import build_plan
from tfkd_cli.tables.spec import load_scale, load_table

from conftest import fail


def test_layers_apply_in_one_order():
    """Each layer wins over the ones below it; the scale sees everything under it."""
    seen = {}

    def scale(d):
        seen.update(epochs=d["train"]["epochs"], width=d["width"])
        return {**d, "width": 0.5}

    full = resolve_layers([{"train": {"epochs": 7}, "width": 0.25}, {"width": 0.125}], dataset="imagenet",
                          scale=scale, sets=[{"seed": 3}, {"seed": 4}])
    assert seen == {"epochs": 7, "width": 0.125}  # the layers, above the profile (imagenet: 90 epochs)
    assert (full["train"]["epochs"], full["width"], full["seed"]) == (7, 0.5, 4)
    assert full["train"]["batch_size"] == 512  # the profile, above the defaults (128)
    assert resolve_layers([], dataset="cifar100")["train"]["batch_size"] == 128


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


# -- every layer is validated ----------------------------------------------------------

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
