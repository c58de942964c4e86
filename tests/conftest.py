"""Helpers and fixtures shared by the test modules.

Import the plain helpers with `from conftest import ...` (pytest puts tests/ on sys.path);
the fixtures (`finished_run`, `run`, `tiny100`) need no import.

- `ROOT`, `FIXTURES`, `SAMPLE20`: the repository, tests/fixtures/, and the 20 official
  CIFAR-100 test images in the official `cifar-100-python` layout (test and meta, no train).
- `DIGITS`: the CLI flags of a tiny, load-independent training run (digits, width 0.125,
  one CPU thread); `TEACH`: a one-epoch resnet18 teacher run with them.
- `cli_cmd`, `cli_env`, `run_cli`: the real `python -m tfkd_cli` as a subprocess.
- `fail`: the in-process bad-input contract (one `tfkd: error:` line, exit 2, no traceback).
- `snapshot`: every file of a folder with its bytes and mtime, to show nothing was touched.
- `dump`, `synthetic_batch`, `make_layout`: crafted datasets in the CIFAR python layout.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tfkd_cli.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SAMPLE20 = FIXTURES / "cifar-100-python-sample20"
DIGITS = ["--dataset", "digits", "--quiet", "--set", "width=0.125", "--set", "runtime.threads=1",
          "--device", "cpu"]
TEACH = ["train-teacher", *DIGITS, "--epochs", "1"]

# tiny100-32 (the CIFAR-100-shaped stand-in of --scale mini) is 159 MB and not in the repository.
TINY100_TARBALL = ROOT.parent / "shared" / "data" / "tiny100-32.tar.gz"
TINY100_DIR = ROOT / "data" / "tiny100-32"


# -- the CLI ---------------------------------------------------------------------------


def cli_cmd(args: list) -> list[str]:
    """The command line of the real CLI in this interpreter."""
    return [sys.executable, "-m", "tfkd_cli", *map(str, args)]


def cli_env(**extra: str) -> dict:
    """The environment without a fault injection left over from the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "TFKD_FAULT"}
    env.update(extra)
    return env


def run_cli(args: list, *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m tfkd_cli ARGS` from the repository root to its end; capture its output."""
    return subprocess.run(cli_cmd(args), cwd=ROOT, env=env if env is not None else cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def fail(args: list, exit_code: int = 2) -> str:
    """Invoke the CLI in-process; assert the one-line error contract; return the line."""
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}\n{r.output}"
    assert r.exit_code == exit_code, f"exit {r.exit_code}: {r.output}"
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert lines[0].startswith("tfkd: error: "), lines[0]
    return lines[0]


def snapshot(d: Path) -> dict:
    """Every file under `d` with its bytes and modification time."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch resnet18 run on digits (10 classes). Shared: never modify it; use `run`."""
    out = tmp_path_factory.mktemp("runs") / "r18"
    r = CliRunner().invoke(cli, [*TEACH, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A private copy of the finished run, to be left untouched by the failing command."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# -- crafted data ----------------------------------------------------------------------


def dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def synthetic_batch(n: int, num_classes: int, seed: int, label_key: str = "fine_labels") -> dict:
    """A batch pickle's dict: n random 32x32 RGB images, labels cycling through the classes, shuffled."""
    rng = np.random.RandomState(seed)
    labels = [i % num_classes for i in range(n)]
    rng.shuffle(labels)
    return {"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), label_key: labels,
            "filenames": [f"img{i}.png" for i in range(n)], "batch_label": "synthetic"}


def make_layout(d: Path, n_train=240, n_test=60, num_classes=12, label_key="fine_labels") -> Path:
    """A crafted dataset in the CIFAR-100 python layout (train, test, meta pickles)."""
    d.mkdir(parents=True, exist_ok=True)
    dump(d / "train", synthetic_batch(n_train, num_classes, 1, label_key))
    dump(d / "test", synthetic_batch(n_test, num_classes, 2, label_key))
    dump(d / "meta", {"fine_label_names": [f"class{i}" for i in range(num_classes)]})
    return d


@pytest.fixture(scope="session")
def tiny100(tmp_path_factory) -> Path:
    """A folder with tiny100-32's `test` and `meta` pickles (its `train` too when extracted in data/).

    Found as data/tiny100-32/ (where the README puts it for --scale mini) or as
    ../shared/data/tiny100-32.tar.gz (CI); the test is skipped when neither exists."""
    if (TINY100_DIR / "test").is_file():
        return TINY100_DIR
    if not TINY100_TARBALL.is_file():
        pytest.skip(f"tiny100-32 not found (neither {TINY100_DIR}/ nor {TINY100_TARBALL}): "
                    "the optional real-data set of --scale mini, see README 'Data'")
    out = tmp_path_factory.mktemp("tiny100")
    with tarfile.open(TINY100_TARBALL, "r:gz") as tar:
        for m in tar:
            if m.isfile() and Path(m.name).name in ("test", "meta"):
                (out / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    return out
