"""The package works when installed from its wheel, away from the checkout (issue #24).

The wheel is built from a copy of the files a build reads, installed into a fresh virtualenv
outside the repository, and driven from a folder that is not the checkout. The virtualenv
reuses the torch already installed (--system-site-packages, for time); the editable tfkd of the
system site-packages must not shadow the wheel, so the test asserts where tfkd_cli is imported from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 300) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, tfkd script, a working folder, env) for a wheel installed outside the repo."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("tfkd_cli", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TFKD_RECIPES", "TFKD_DATA_ROOT")}
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
         src, env)
    (wheel,) = (tmp / "dist").glob("tfkd-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], tmp, env)
    work = tmp / "elsewhere"
    work.mkdir()
    return wheel, py, venv / "bin" / "tfkd", work, env


def test_wheel_carries_every_module_the_recipes_and_the_type_marker(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "tfkd_cli").rglob("*.py")}
    recipes = {"tfkd_cli/" + p.relative_to(REPO).as_posix() for p in (REPO / "recipes").rglob("*")
               if p.is_file() and p.suffix in (".yaml", ".md")}
    assert sources - names == set()  # a new subpackage must be listed in pyproject.toml
    assert recipes and recipes - names == set()
    assert "tfkd_cli/py.typed" in names


def test_installed_wheel_runs_from_a_folder_that_is_not_the_checkout(installed):
    _, py, tfkd, work, env = installed
    where = _run([str(py), "-c", "import tfkd_cli, tfkd_cli.config.recipe as r; print(tfkd_cli.__file__); print(r.recipes_dir())"],
                 work, env).split()
    venv = py.parent.parent.resolve()
    assert Path(where[0]).resolve().is_relative_to(venv), f"tfkd_cli imported from {where[0]}, not the wheel"
    assert Path(where[1]).resolve().is_relative_to(venv) and (Path(where[1]) / "tables" / "index.yaml").is_file()

    listing = _run([str(tfkd), "reproduce", "--list"], work, env)
    assert "table3" in listing and "tfkd-reg-cifar100" in listing

    out = _run([str(tfkd), "train-teacher", "--dataset", "digits", "--epochs", "1", "--width", "0.25",
                "--out", "runs/d", "--quiet", "--device", "cpu"], work, env)
    assert "best top-1" in out and (work / "runs" / "d" / "summary.json").is_file()

    plan = _run([str(tfkd), "reproduce", "table3", "--scale", "smoke", "--dry-run", "--runs-dir", "runs/reproduce"],
                work, env)
    assert "resnet18" in plan and not (work / "runs" / "reproduce").exists()
