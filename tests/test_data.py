"""Tests of the data layer: readers, registry, determinism, augmentation vs the official transforms, errors."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from tfkd_cli.data import DATASETS, build_data, default_root, read_split
from tfkd_cli.data.augment import AugParams, apply_params, normalize, sample_params
from tfkd_cli.data.loaders import class_balanced_subset, shard_order
from tfkd_cli.data.readers import CIFAR100_MEAN, CIFAR100_STD, DIGITS_MEAN, DIGITS_STD
from tfkd_cli.data.reference import ReferenceDataset, official_test_transform, official_train_transform
from tfkd_cli.errors import TfkdError

from conftest import SAMPLE20, dump, make_layout, synthetic_batch



# --------------------------------------------------------------------------- helpers


def _pil_reference(img_chw: torch.Tensor, top: int, left: int, flip: bool, angle: float, pad: int = 4) -> torch.Tensor:
    """The official ops through torchvision's PIL functional API, with given parameters."""
    img = Image.fromarray(img_chw.permute(1, 2, 0).numpy())
    img = TF.crop(TF.pad(img, pad, fill=0), top, left, img.height, img.width)  # == RandomCrop(32, padding=4)
    if flip:
        img = TF.hflip(img)
    img = TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST, fill=0)  # == RandomRotation defaults
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return make_layout(tmp_path_factory.mktemp("layout") / "synth")


# --------------------------------------------------------------------------- readers


def test_registry_and_default_root(monkeypatch):
    assert {"cifar100", "cifar10", "cifar-layout", "digits", "tiny-imagenet", "imagenet"} <= set(DATASETS)
    assert DATASETS["cifar10"].mean == CIFAR100_MEAN and DATASETS["cifar10"].std == CIFAR100_STD  # official quirk
    assert DATASETS["cifar100"].rotation == 15 and DATASETS["cifar100"].crop_padding == 4
    assert DATASETS["tiny-imagenet"].crop_padding is None and DATASETS["tiny-imagenet"].rotation == 20
    assert all(DATASETS[n].in_memory for n in ("cifar100", "cifar10", "cifar-layout", "digits"))
    monkeypatch.setenv("TFKD_DATA_ROOT", "/some/where")
    assert default_root() == Path("/some/where")
    monkeypatch.delenv("TFKD_DATA_ROOT")
    assert default_root() == Path("data")


def test_cifar100_sample20_folder_and_tarball(tmp_path):
    with open(SAMPLE20 / "test", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    with open(SAMPLE20 / "meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")

    x, y, classes = read_split("cifar100", SAMPLE20, "test")  # root = the extracted folder itself
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == raw["fine_labels"]
    assert classes == meta["fine_label_names"] and len(classes) == 100
    assert torch.equal(x, torch.from_numpy(raw["data"]).view(20, 3, 32, 32))

    # the official layout: ROOT/cifar-100-python/{train,test,meta}, and the archive ROOT/cifar-100-python.tar.gz
    folder = tmp_path / "dir" / "cifar-100-python"
    folder.mkdir(parents=True)
    shutil.copy(SAMPLE20 / "test", folder / "test")
    shutil.copy(SAMPLE20 / "meta", folder / "meta")
    train = synthetic_batch(300, 100, 7)
    dump(folder / "train", train)
    xf, yf, cf = read_split("cifar100", tmp_path / "dir", "test")
    assert torch.equal(xf, x) and torch.equal(yf, y) and cf == classes

    arch_root = tmp_path / "tar"
    arch_root.mkdir()
    with tarfile.open(arch_root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    xt, yt, ct = read_split("cifar100", arch_root, "test")
    assert torch.equal(xt, x) and torch.equal(yt, y) and ct == classes
    xtr, ytr, _ = read_split("cifar100", arch_root, "train")
    assert torch.equal(xtr, torch.from_numpy(train["data"]).view(-1, 3, 32, 32))
    assert ytr.tolist() == train["fine_labels"]
    assert not (arch_root / "cifar-100-python").exists()  # read in place, nothing extracted

    data = build_data("cifar100", arch_root, batch_size=128)
    assert (data.num_train, data.num_test, data.num_classes, data.steps_per_epoch) == (300, 20, 100, 3)


def test_test_only_copy_builds_but_training_needs_train():
    data = build_data("cifar100", SAMPLE20)
    assert data.num_test == 20 and not data.has_train and data.num_train == 0
    xs, ys = zip(*data.test_batches())
    assert torch.cat(ys).tolist() == read_split("cifar100", SAMPLE20, "test")[1].tolist()
    assert torch.cat(xs).shape == (20, 3, 32, 32)
    for use in (lambda: data.steps_per_epoch, lambda: data.train_batches(0, 0), lambda: data.train_eval_batches()):
        with pytest.raises(TfkdError, match=r"train split not found: missing .*sample20/train"):
            use()
    with pytest.raises(TfkdError, match="train split not found"):
        read_split("cifar100", SAMPLE20, "train")


def test_tiny100_stand_in_reads_as_cifar_layout(tiny100):
    """The real data of --scale mini: 100 classes, 50 test images each, the files the data README lists."""
    assert hashlib.md5((tiny100 / "test").read_bytes()).hexdigest() == "967d48860f1d8b57bc5a03c89b3a20b0"
    x, y, classes = read_split("cifar-layout", tiny100, "test")
    assert x.shape == (5000, 3, 32, 32) and x.dtype == torch.uint8 and len(classes) == 100
    assert torch.bincount(y, minlength=100).tolist() == [50] * 100


def test_cifar_layout(layout, tmp_path):
    x, y, classes = read_split("cifar-layout", layout, "train")
    assert x.shape == (240, 3, 32, 32) and len(classes) == 12
    raw = pickle.loads((layout / "train").read_bytes())
    assert y.tolist() == raw["fine_labels"]
    data = build_data("cifar-layout", layout, batch_size=50)
    assert (data.num_classes, data.num_train, data.num_test, data.steps_per_epoch) == (12, 240, 60, 5)
    assert data.mean == CIFAR100_MEAN
    # 'labels' instead of 'fine_labels' (and label_names) is accepted too
    other = tmp_path / "other"
    other.mkdir()
    dump(other / "train", synthetic_batch(30, 3, 1, "labels"))
    dump(other / "test", synthetic_batch(9, 3, 2, "labels"))
    dump(other / "meta", {"label_names": ["a", "b", "c"]})
    assert build_data("cifar-layout", other).num_classes == 3


def test_cifar10_layout(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        dump(d / f"data_batch_{i}", synthetic_batch(20, 10, i, "labels"))
    dump(d / "test_batch", synthetic_batch(10, 10, 9, "labels"))
    dump(d / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    data = build_data("cifar10", tmp_path, augment=False, batch_size=32)
    assert (data.num_train, data.num_test, data.num_classes) == (100, 10, 10)
    x, y, _ = read_split("cifar10", tmp_path, "train")
    assert torch.equal(x[20:40], torch.from_numpy(pickle.loads((d / "data_batch_2").read_bytes())["data"]).view(20, 3, 32, 32))


def test_digits():
    x, y, classes = read_split("digits", None, "train")
    xt, yt, _ = read_split("digits", None, "test")
    assert x.shape == (1437, 3, 32, 32) and xt.shape == (360, 3, 32, 32) and x.dtype == torch.uint8
    assert classes == [str(i) for i in range(10)]
    assert torch.bincount(y, minlength=10).min() >= 139 and torch.bincount(yt, minlength=10).min() >= 35  # stratified
    x2, y2, _ = read_split("digits", None, "train")
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic split
    assert int(x.max()) == 255 and torch.equal(x[:, 0], x[:, 2])  # 0..255, grey replicated to 3 channels
    f = x.double() / 255
    assert np.allclose(f.mean((0, 2, 3)).numpy(), DIGITS_MEAN, atol=1e-12)
    assert np.allclose(f.std((0, 2, 3), unbiased=False).numpy(), DIGITS_STD, atol=1e-12)
    data = build_data("digits", batch_size=100)
    assert (data.num_train, data.num_test, data.num_classes, data.steps_per_epoch) == (1437, 360, 10, 15)


# --------------------------------------------------------------------------- determinism


def _collect(it):
    xs, ys = zip(*it)
    return torch.cat(xs), torch.cat(ys)


def test_train_batches_deterministic_and_resumable(layout):
    data = build_data("cifar-layout", layout, batch_size=64)
    state = torch.get_rng_state()
    b1 = list(data.train_batches(3, seed=11))
    b2 = list(data.train_batches(3, seed=11))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither used nor disturbed
    assert len(b1) == data.steps_per_epoch == 4 and [len(y) for _, y in b1] == [64, 64, 64, 48]  # drop_last=False
    for (xa, ya), (xb, yb) in zip(b1, b2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.dtype == torch.float32 and ya.dtype == torch.int64 and xa.shape[1:] == (3, 32, 32)
    # another epoch (or seed) -> another order and other augmentations
    other = torch.cat([y for _, y in data.train_batches(4, seed=11)])
    assert not torch.equal(other, torch.cat([y for _, y in b1]))
    assert not torch.equal(data.train_order(3, 12), data.train_order(3, 11))
    # resume: start_step=k yields exactly the tail
    for k in (1, 3, 4):
        tail = list(data.train_batches(3, seed=11, start_step=k))
        assert len(tail) == len(b1) - k
        for (xa, ya), (xb, yb) in zip(tail, b1[k:]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(TfkdError, match="start_step"):
        data.train_batches(3, seed=11, start_step=5)
    # batches are prepared a few at a time (chunk_steps); the result must not depend on it
    for chunk in (1, 3):
        data.chunk_steps = chunk
        for (xa, ya), (xb, yb) in zip(data.train_batches(3, seed=11, start_step=1), b1[1:]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # labels follow the order; un-augmented batches are the normalized stored images in that order
    plain = build_data("cifar-layout", layout, batch_size=64, augment=False)
    x_all, y_all, _ = read_split("cifar-layout", layout, "train")
    order = plain.train_order(3, 11)
    xp, yp = _collect(plain.train_batches(3, seed=11))
    assert torch.equal(yp, y_all[order]) and torch.equal(torch.cat([y for _, y in b1]), yp)
    mean, std = torch.tensor(CIFAR100_MEAN), torch.tensor(CIFAR100_STD)
    assert torch.equal(xp, normalize(x_all[order], mean, std))
    # train_eval_batches: stored order, no augmentation, optional limit
    xe, ye = _collect(plain.train_eval_batches(limit=100))
    assert torch.equal(ye, y_all[:100]) and torch.equal(xe, normalize(x_all[:100], mean, std))


def test_ranks_are_disjoint_and_cover(layout):
    n = 240
    for ws in (2, 3):
        orders = [build_data("cifar-layout", layout, batch_size=32, rank=r, world_size=ws).train_order(5, 1) for r in range(ws)]
        assert all(len(o) == n // ws for o in orders)
        allidx = torch.cat(orders)
        assert sorted(allidx.tolist()) == list(range(n))  # disjoint and covering
        ys = [torch.cat([y for _, y in build_data("cifar-layout", layout, batch_size=32, rank=r, world_size=ws)
                         .train_batches(5, seed=1)]) for r in range(ws)]
        assert [len(v) for v in ys] == [n // ws] * ws
    # not divisible: padded like DistributedSampler (equal length, every sample present, only the pad repeated)
    o = [shard_order(10, 0, 0, r, 4) for r in range(4)]
    assert [len(v) for v in o] == [3, 3, 3, 3]
    flat = torch.cat(o).tolist()
    assert set(flat) == set(range(10)) and len(flat) - len(set(flat)) == 2
    assert torch.equal(torch.stack(o, 1).flatten()[:10], shard_order(10, 0, 0, 0, 1))  # same permutation, interleaved


def test_per_class_subset(layout):
    data = build_data("cifar-layout", layout, per_class=5, subset_seed=3, augment=False)
    _, y = _collect(data.train_eval_batches())
    assert data.num_train == 60 and torch.bincount(y).tolist() == [5] * 12
    again = build_data("cifar-layout", layout, per_class=5, subset_seed=3, augment=False)
    assert torch.equal(_collect(again.train_eval_batches())[0], _collect(data.train_eval_batches())[0])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 0])
    keep = class_balanced_subset(labels, 2, 0, 3, "t")
    assert torch.bincount(labels[keep]).tolist() == [2, 2, 2]
    with pytest.raises(TfkdError, match=r"per_class=3 .* class 2 has only 2"):
        class_balanced_subset(labels, 3, 0, 3, "t")
    with pytest.raises(TfkdError, match="per_class=21"):
        build_data("cifar-layout", layout, per_class=21)


# --------------------------------------------------------------------------- augmentation vs the official transforms


def test_fast_augmentation_pixel_exact_vs_torchvision():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8, generator=g)
    # angle 0: the fast path equals torchvision's functional pad+crop and hflip, for every offset and flip
    grid = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)]
    p = AugParams(torch.tensor([t for t, _, _ in grid]), torch.tensor([l for _, l, _ in grid]),
                  torch.tensor([f for _, _, f in grid]), torch.zeros(len(grid)))
    out = apply_params(imgs[: len(grid)], p, 4)
    for k, (t, l, f) in enumerate(grid):
        img = Image.fromarray(imgs[k].permute(1, 2, 0).numpy())
        ref = TF.crop(TF.pad(img, 4, fill=0), t, l, 32, 32)
        ref = TF.hflip(ref) if f else ref
        assert torch.equal(out[k], torch.from_numpy(np.array(ref)).permute(2, 0, 1)), (t, l, f)
    # with rotation too (Pillow's fixed-point nearest rule is reproduced): random and extreme angles
    p = sample_params(400, g)
    p.angle[:4] = torch.tensor([15.0, -15.0, 0.0, -0.0])
    out = apply_params(imgs, p, 4)
    for k in range(400):
        ref = _pil_reference(imgs[k], int(p.top[k]), int(p.left[k]), bool(p.flip[k]), float(p.angle[k]))
        assert torch.equal(out[k], ref), k
    # normalize == ToTensor + Normalize, bit for bit
    tf = official_test_transform("cifar100")
    mine = normalize(out[:8], torch.tensor(CIFAR100_MEAN), torch.tensor(CIFAR100_STD))
    for k in range(8):
        assert torch.equal(mine[k], tf(Image.fromarray(out[k].permute(1, 2, 0).numpy())))


def test_augmentation_parameter_distributions_match_torchvision():
    n = 20000
    p = sample_params(n, torch.Generator().manual_seed(123))
    # torchvision's own parameter samplers, driven by the global RNG (restored afterwards)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(321)
        padded = torch.zeros(3, 40, 40)
        ref_crop = np.array([T.RandomCrop.get_params(padded, (32, 32))[:2] for _ in range(n)])
        ref_angle = np.array([T.RandomRotation.get_params([-15.0, 15.0]) for _ in range(n)])
        ref_flip = (torch.rand(n) < 0.5).numpy()  # RandomHorizontalFlip: torch.rand(1) < p
    ours_crop = np.stack([p.top.numpy(), p.left.numpy()], 1)
    assert ours_crop.min() == 0 and ours_crop.max() == 8
    ours_cells = np.bincount(ours_crop[:, 0] * 9 + ours_crop[:, 1], minlength=81)
    ref_cells = np.bincount(ref_crop[:, 0] * 9 + ref_crop[:, 1], minlength=81)
    assert ref_crop.min() == 0 and ref_crop.max() == 8 and len(ours_cells) == 81
    assert stats.chisquare(ours_cells).pvalue > 1e-4  # uniform over the 9x9 offsets
    assert stats.chi2_contingency(np.stack([ours_cells, ref_cells])).pvalue > 1e-4  # same as torchvision's
    flips = p.flip.numpy()
    assert abs(flips.mean() - 0.5) < 4 * 0.5 / np.sqrt(n) and abs(flips.mean() - ref_flip.mean()) < 6 * 0.5 / np.sqrt(n)
    ang = p.angle.numpy().astype(np.float64)
    assert ang.min() >= -15 and ang.max() <= 15
    assert stats.kstest(ang, stats.uniform(-15, 30).cdf).pvalue > 1e-4
    assert stats.ks_2samp(ang, ref_angle).pvalue > 1e-4
    # independence of the three draws (no correlation between crop, flip and angle)
    for a, b in ((ours_crop[:, 0], ang), (ours_crop[:, 1], flips), (flips, ang), (ours_crop[:, 0], ours_crop[:, 1])):
        assert abs(np.corrcoef(a, b.astype(np.float64))[0, 1]) < 5 / np.sqrt(n)


def test_end_to_end_distribution_vs_reference_pipeline():
    """Observable statistics of whole augmented images: fast path vs the official PIL Compose."""
    n = 1500
    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    img[0, 0] = 200  # a flat red image: zero fill (crop padding + rotation corners) is visible
    img[0, 1, :, :16] = 255  # left half green: shows the flip
    data_x = img.expand(n, -1, -1, -1).contiguous()
    ref_ds = ReferenceDataset(data_x, torch.zeros(n, dtype=torch.int64), official_train_transform("cifar100"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        ref = torch.stack([ref_ds[i][0] for i in range(n)])
    g = torch.Generator().manual_seed(6)
    ours = normalize(apply_params(data_x, sample_params(n, g), 4), torch.tensor(CIFAR100_MEAN), torch.tensor(CIFAR100_STD))
    fill_value = (0 - CIFAR100_MEAN[0]) / CIFAR100_STD[0]

    def feats(x):
        fill = (x[:, 0] - fill_value).abs().lt(1e-4).float().mean((1, 2))  # fraction of filled pixels
        green = x[:, 1] > 0
        left_green = green[:, :, :16].float().mean((1, 2)) - green[:, :, 16:].float().mean((1, 2))
        return fill.numpy(), (left_green > 0).float().numpy()

    fill_o, flip_o = feats(ours)
    fill_r, flip_r = feats(ref)
    assert stats.ks_2samp(fill_o, fill_r).pvalue > 1e-3
    assert abs(flip_o.mean() - flip_r.mean()) < 0.08
    assert abs(fill_o.mean() - fill_r.mean()) < 0.01


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_and_bad_args(layout):
    with pytest.raises(TfkdError, match=r"unknown dataset 'cifar1000'; expected one of: cifar100, cifar10, cifar-layout"):
        build_data("cifar1000")
    with pytest.raises(TfkdError, match="world_size"):
        build_data("cifar-layout", layout, world_size=0)
    with pytest.raises(TfkdError, match="rank"):
        build_data("cifar-layout", layout, rank=2, world_size=2)


def test_missing_files_message(tmp_path):
    with pytest.raises(TfkdError) as e:
        build_data("cifar100", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"CIFAR-100 not found under {tmp_path}" in msg
    assert f"{tmp_path}/cifar-100-python/" in msg and f"{tmp_path}/cifar-100-python.tar.gz" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg and "--download" in msg
    with pytest.raises(TfkdError, match=r"CIFAR-10 not found .*cifar-10-python.tar.gz"):
        build_data("cifar10", tmp_path)
    with pytest.raises(TfkdError, match=r"cifar-layout .*not found.*expected .*\{train,test,meta\}"):
        build_data("cifar-layout", tmp_path / "nope")
    with pytest.raises(TfkdError, match="Tiny-ImageNet not found"):
        build_data("tiny-imagenet", tmp_path)


def test_bad_label_corrupt_pickle_bad_shape(tmp_path):
    d = make_layout(tmp_path / "bad", n_train=24, n_test=12, num_classes=4)
    batch = synthetic_batch(12, 4, 3)
    batch["fine_labels"][5] = 7
    dump(d / "test", batch)
    with pytest.raises(TfkdError, match=r"bad/test: label 7 at index 5 is out of range; expected 0\.\.3"):
        build_data("cifar-layout", d)
    (d / "test").write_bytes(pickle.dumps(synthetic_batch(12, 4, 3), protocol=2)[:500])  # truncated
    with pytest.raises(TfkdError, match=r"corrupt or truncated pickle .*bad/test"):
        read_split("cifar-layout", d, "test")
    (d / "test").write_bytes(b"this is not a pickle")
    with pytest.raises(TfkdError, match="corrupt or truncated pickle"):
        read_split("cifar-layout", d, "test")
    batch = synthetic_batch(12, 4, 3)
    batch["data"] = batch["data"][:, :1000]
    dump(d / "test", batch)
    with pytest.raises(TfkdError, match=r"'data' has shape \(12, 1000\); expected \(N, 3072\)"):
        read_split("cifar-layout", d, "test")
    batch = synthetic_batch(12, 4, 3)
    batch["fine_labels"] = batch["fine_labels"][:10]
    dump(d / "test", batch)
    with pytest.raises(TfkdError, match="12 integer labels"):
        read_split("cifar-layout", d, "test")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (d / "test").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(TfkdError, match="refused global"):
        read_split("cifar-layout", d, "test")


def test_corrupt_tarball(tmp_path):
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    dump(folder / "train", synthetic_batch(20, 100, 1))
    dump(folder / "test", synthetic_batch(20, 100, 2))
    dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-100-python.tar.gz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(TfkdError, match=r"corrupt or truncated archive .*cifar-100-python.tar.gz"):
        build_data("cifar100", root)


# --------------------------------------------------------------------------- folder datasets


def _make_tiny_imagenet(root: Path, bad: bool = False) -> Path:
    base = root / "tiny-imagenet-200"
    rng = np.random.RandomState(0)
    wnids = ["n02", "n01", "n03"]
    lines = []
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(d / f"{w}_{i}.JPEG", format="PNG")
    (base / "val" / "images").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(base / "val" / "images" / f"val_{i}.JPEG",
                                                                                 format="PNG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    if bad:
        (base / "train" / "n01" / "images" / "n01_0.JPEG").write_bytes(b"not an image")
    return root


def test_tiny_imagenet_folder_path(tmp_path):
    root = _make_tiny_imagenet(tmp_path / "ti")
    state = torch.get_rng_state()
    data = build_data("tiny-imagenet", root, batch_size=5, workers=0)
    assert data.classes == ["n01", "n02", "n03"] and data.num_classes == 3  # sorted wnids of train/
    assert (data.num_train, data.num_test, data.steps_per_epoch) == (12, 6, 3)
    xt, yt = _collect(data.test_batches())
    assert xt.shape == (6, 3, 64, 64) and yt.tolist() == [1, 0, 2, 1, 0, 2]  # val_annotations.txt mapping
    full = list(data.train_batches(2, seed=4))
    again = list(data.train_batches(2, seed=4))
    tail = list(data.train_batches(2, seed=4, start_step=1))
    assert [len(y) for _, y in full] == [5, 5, 2]
    for (xa, ya), (xb, yb) in zip(full, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(full[1:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the same batches from worker processes (augmentation seeded per sample, not per worker)
    multi = build_data("tiny-imagenet", root, batch_size=5, workers=2)
    for (xa, ya), (xb, yb) in zip(full, multi.train_batches(2, seed=4)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(data.train_order(3, 4), data.train_order(2, 4))
    assert torch.equal(torch.cat([y for _, y in full]), torch.tensor([lab for _, lab in multi._train_ds.samples])[data.train_order(2, 4)])
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched, also with worker processes


def test_unreadable_image_is_one_line_error(tmp_path):
    root = _make_tiny_imagenet(tmp_path / "ti", bad=True)
    for workers in (0, 2):
        data = build_data("tiny-imagenet", root, batch_size=12, workers=workers)
        with pytest.raises(TfkdError) as e:
            list(data.train_batches(0, seed=0))
        assert "\n" not in str(e.value) and str(e.value).startswith("unreadable image ") and "n01_0.JPEG" in str(e.value)


def test_download_failure_is_a_tfkd_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(TfkdError, match=r"download of CIFAR-100 from https://.*failed .*place cifar-100-python.tar.gz under"):
        build_data("cifar100", tmp_path, download=True)


def test_channels_last_and_eval_batches(layout):
    data = build_data("cifar-layout", layout, batch_size=64, eval_batch_size=25, channels_last=True)
    x, _ = next(iter(data.train_batches(0, 0)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    sizes = [len(y) for _, y in data.test_batches()]
    assert sizes == [25, 25, 10]
    assert sum(len(y) for _, y in data.train_eval_batches()) == 240
