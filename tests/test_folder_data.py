"""`--dataset folder`: any image folder as a dataset (issue #24), on generated folders of a few
64-pixel images. README's "Your own model and data" commands run as written (plus --epochs 1)."""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tfkd_cli.data import DataSpec, build_data
from tfkd_cli.data.imagefolder import pixel_stats

from conftest import ROOT, cli_env, fail, run_cli

K = 12


def make_folder(root: Path, classes: int = K, per_class: dict | None = None, size: int = 64, seed: int = 0) -> Path:
    """root/{train,val}/classNN/i.png: class c's images are noise around a grey level of its own."""
    rng = np.random.default_rng(seed)
    for split, n in (per_class or {"train": 3, "val": 2}).items():
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((size, size, 3)) * 60 + c * 15).clip(0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("own") / "imgs")


def test_folder_reads_classes_from_names_and_records_train_statistics(folder):
    data = build_data(DataSpec("folder", folder, batch_size=8))
    assert (data.num_classes, data.num_train, data.num_test, data.image_size) == (K, 3 * K, 2 * K, 64)
    assert data.classes == [f"class{c:02d}" for c in range(K)]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                          for p in sorted(folder.glob("train/*/*.png"))])
    assert data.mean == pytest.approx(pixel_stats([pixels])[0], abs=1e-12)
    x, y = next(iter(data.train_batches(0, 0)))
    assert x.shape == (8, 3, 64, 64) and y.max() < K


def test_folder_resizes_on_read_and_streams_past_the_memory_budget(folder):
    mem = build_data(DataSpec("folder", folder, batch_size=8, image_size=40, workers=0))
    streamed = build_data(DataSpec("folder", folder, batch_size=8, image_size=40, workers=0, memory_mb=0))
    assert type(mem).__name__ == "InMemoryData" and type(streamed).__name__ == "FolderData"
    assert mem.mean == pytest.approx(streamed.mean, abs=1e-12)
    a = torch.cat([x for x, _ in mem.test_batches()])
    b = torch.cat([x for x, _ in streamed.test_batches()])
    assert a.shape == b.shape == (2 * K, 3, 40, 40)
    assert (a - b).abs().max() < 0.05  # the same resized pixels (the PIL path rounds through ToTensor)


def test_folder_with_val_and_test_uses_both(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, per_class={"train": 3, "val": 2, "test": 1})
    data = build_data(DataSpec("folder", root, batch_size=4))
    assert data.num_test == 3 and data.val is not None and data.val.num_test == 6


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own model and data\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.slow
def test_readme_own_model_and_data_commands_run(folder, tmp_path):
    cmds = _readme_commands()
    assert [c[:2] for c in cmds] == [["tfkd", "train-teacher"], ["tfkd", "distill"], ["tfkd", "self-train"]]
    for cmd in cmds:
        args = [str(folder) if a == "DIR" else str(tmp_path / a) if a.startswith("runs/") else a for a in cmd[1:]]
        p = run_cli([*args, "--epochs", "1", "--quiet", "--device", "cpu", "--set", "runtime.threads=1"],
                    env=cli_env(OMP_NUM_THREADS="1"))
        assert p.returncode == 0, p.stderr
        assert "DataLoader will create" not in p.stderr
        out = Path(args[args.index("--out") + 1])
        s = json.loads((out / "summary.json").read_text())
        assert (s["status"], s["dataset"], s["num_classes"], s["num_train"]) == ("finished", "folder", K, 3 * K)
        assert s["normalization"]["image_size"] == 64
    assert json.loads((tmp_path / "runs/own_kd/summary.json").read_text())["teacher"]["model"] == "tv:resnet18"


def _bad(tmp_path: Path, case: str) -> tuple[Path, list, str]:
    root = make_folder(tmp_path / "imgs", classes=3)
    extra: list = []
    if case == "empty-class":
        (root / "train" / "class09").mkdir()
        want = f"empty class folder {root / 'train' / 'class09'}"
    elif case == "not-an-image":
        (root / "train" / "class01" / "notes.txt").write_text("hi")
        want = f"{root / 'train' / 'class01' / 'notes.txt'} is not an image"
    elif case == "corrupt-image":
        (root / "val" / "class01" / "9.png").write_bytes(b"not a png")
        want = f"{root / 'val' / 'class01' / '9.png'} is not a readable image"
    elif case == "val-class-not-in-train":
        make_folder(tmp_path / "more", classes=4, per_class={"val": 1})
        os.rename(tmp_path / "more" / "val" / "class03", root / "val" / "class03")
        want = f"class folder {root / 'val' / 'class03'} is not in train/"
    elif case == "mixed-sizes":
        Image.new("RGB", (48, 48)).save(root / "train" / "class02" / "9.png")
        want = "is 48x48 but"
    elif case == "unreadable-dir":
        os.symlink("loop", root / "train" / "loop")  # a link to itself: no directory can be listed there
        want = f"cannot read directory {root / 'train' / 'loop'}"
    else:  # no-eval-split
        os.rename(root / "val", root / "other")
        want = f"folder dataset {root} has no val/ or test/"
    return root, extra, want


@pytest.mark.parametrize("case", ["empty-class", "not-an-image", "corrupt-image", "val-class-not-in-train",
                                  "mixed-sizes", "unreadable-dir", "no-eval-split"])
def test_bad_folder_is_one_line_naming_the_path(tmp_path, case):
    root, extra, want = _bad(tmp_path, case)
    line = fail(["train-teacher", "--dataset", "folder", "--data-root", root, "--epochs", "1", "--quiet",
                 "--device", "cpu", "--out", tmp_path / "run", *extra])
    assert want in line
    assert not (tmp_path / "run").exists()


def test_mixed_sizes_train_with_image_size(tmp_path):
    root, _, _ = _bad(tmp_path, "mixed-sizes")
    data = build_data(DataSpec("folder", root, batch_size=4, image_size=32))
    assert data.image_size == 32 and data.num_train == 10


@pytest.mark.slow  # trains real CLI runs (the quick loop stays under 3 min)
def test_teacher_of_another_class_count_or_dataset_is_refused(folder, tmp_path):
    teacher = tmp_path / "digits_teacher"
    p = run_cli(["train-teacher", "--dataset", "digits", "--epochs", "1", "--set", "width=0.125", "--quiet",
                 "--device", "cpu", "--set", "runtime.threads=1", "--out", teacher])
    assert p.returncode == 0, p.stderr
    ten = make_folder(tmp_path / "ten", classes=10, per_class={"train": 2, "val": 1}, size=32)
    common = ["distill", "--student", "resnet18", "--set", "width=0.125", "--teacher", teacher, "--epochs", "1",
              "--quiet", "--device", "cpu"]
    line = fail([*common, "--dataset", "folder", "--data-root", folder, "--out", tmp_path / "a"])
    assert "is a 10-class resnet18; the dataset has 12 classes" in line
    line = fail([*common, "--dataset", "folder", "--data-root", ten, "--out", tmp_path / "b"])
    assert "was trained on digits, this run trains on folder" in line and "--teacher-other-dataset" in line
    p = run_cli([*common, "--dataset", "folder", "--data-root", ten, "--out", tmp_path / "c", "--teacher-other-dataset"])
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["status"] == "finished"


def test_streamed_folder_starts_at_most_one_worker_per_core(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, per_class={"train": 4, "val": 1}, size=16)
    data = build_data(DataSpec("folder", root, batch_size=4, workers=64, memory_mb=0))
    assert type(data).__name__ == "FolderData"
    assert data.workers == min(64, len(os.sched_getaffinity(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DataLoader's "suggested max number of worker" is a UserWarning
        x, _ = next(iter(data.train_batches(0, 0)))
    assert x.shape == (4, 3, 16, 16)
