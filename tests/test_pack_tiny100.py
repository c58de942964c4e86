"""benchmarks/pack_tiny100.py: the parts that carry tiny100-32 to a lent GPU rebuild the same
files, byte for byte, and a missing part is an error rather than a smaller data set."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pack_tiny100.py"


def _cifar_layout(root: Path) -> None:
    """A small set in tiny100-32's layout: smooth images (as photos are) plus noise."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, n in (("train", 30), ("test", 7)):
        base = np.linspace(0, 200, 3072).astype(np.int64)
        data = np.clip(base + rng.integers(0, 56, (n, 3072)), 0, 255).astype(np.uint8)
        d = {"data": data, "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
             "filenames": [f"img_{split}_{i}.JPEG" for i in range(n)], "batch_label": f"tiny {split}"}
        (root / split).write_bytes(pickle.dumps(d, protocol=4))
    (root / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)],
                                              "wnids": [f"n{i}" for i in range(100)]}, protocol=4))


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_parts_rebuild_the_same_files(tmp_path):
    src, parts, dest = tmp_path / "src", tmp_path / "parts", tmp_path / "dest"
    _cifar_layout(src)
    assert _run("pack", src, parts, "--parts", "2").returncode == 0
    assert sorted(p.name for p in parts.iterdir()) == ["p1", "p2"]
    p = _run("unpack", dest, parts / "p1", parts / "p2")
    assert p.returncode == 0, p.stderr
    assert "identical" in p.stdout
    for name in ("train", "test", "meta"):
        assert hashlib.md5((dest / name).read_bytes()).digest() == hashlib.md5((src / name).read_bytes()).digest()


def test_a_missing_part_fails(tmp_path):
    src, parts = tmp_path / "src", tmp_path / "parts"
    _cifar_layout(src)
    assert _run("pack", src, parts, "--parts", "2").returncode == 0
    p = _run("unpack", tmp_path / "dest", parts / "p1")
    assert p.returncode == 2
    assert "missing" in p.stderr
