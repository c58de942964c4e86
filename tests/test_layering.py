"""Layers, twice.

A run's recipe layers, one order for single runs and table runs
(`tfkd_cli.config.recipe.resolve_layers`): defaults < dataset profile < recipe file or table < scale <
--set < flags. Every layer is validated, also where a higher one overrides it; `reproduce`
takes a scale file and --set as its top layers.

The package's import layers (README "Layout"), bottom-up: errors < library < config < storage <
training < tables < execution < sweep < cli. Every import, also one inside a function, goes to
the same layer or one below; no module imports itself back through others (no circles); no
module is over 400 lines and no function over 60."""

import ast
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


# -- the package's import layers ------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "tfkd_cli"
LIBRARY = ("losses", "functional", "grads", "methods", "diagnostics", "metrics", "fold", "models", "data")
# bottom-up; a module's layer is its sub-package, or for a top-level module its own name
LAYERS = [("errors", "__init__"), LIBRARY, ("config",), ("storage",), ("training",), ("tables",),
          ("execution",), ("sweep",), ("cli", "__main__")]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    head = module.split(".")[1] if "." in module else "__init__"
    found = [i for i, names in enumerate(LAYERS) if head in names]
    assert found, f"{module}: in no layer; add its folder to LAYERS (and README's Layout)"
    return found[0]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The tfkd_cli modules `path` imports, anywhere in it (a name taken from a package that is
    itself a module counts as that module)."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "tfkd_cli"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "tfkd_cli":
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    return {m for m in out if m in modules and m != me}


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(files)) for m, p in files.items()}


def test_every_import_goes_down_or_sideways():
    graph = _graph()
    up = [f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})"
          for m, deps in sorted(graph.items()) for i in sorted(deps)
          # a package importing tfkd_cli itself is the package's own __init__, run first anyway
          if i != "tfkd_cli" and _layer(i) > _layer(m)]
    assert not up, "imports that run back up:\n" + "\n".join(up)


def test_no_import_circles():
    graph = {m: {d for d in deps if d != "tfkd_cli"} for m, deps in _graph().items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, "import circle: " + " -> ".join(path[path.index(m):] + [m])
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_modules_and_functions_stay_small():
    big = []
    for p in sorted(PACKAGE.rglob("*.py")):
        text = p.read_text()
        if len(text.splitlines()) > 400:
            big.append(f"{p.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                big.append(f"{p.relative_to(PACKAGE.parent)}: {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert not big, "\n".join(big)
