"""End to end through the CLI on `digits` (offline): train, distill (KD, De-KD), self-train,
Tf-KD_reg, LSR, evaluate, compare; the authors' checkpoint format; safe loading."""

import csv
import json
import pickle

import pytest
import torch
import yaml
from click.testing import CliRunner

from tfkd_cli.storage.checkpoint import sha256
from tfkd_cli.cli.main import cli
from tfkd_cli.methods import METHODS
from tfkd_cli.models import build_model
from tfkd_cli.config.recipe import from_dict

from conftest import run_cli

TINY = ["--dataset", "digits", "--epochs", "1", "--width", "0.125", "--quiet", "--device", "cpu"]


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r18"
    run("train-teacher", *TINY, "--epochs", "2", "--set", "train.keep_epochs=[1]", "--out", out)
    return out


def test_help_lists_commands():
    out = run("--help").stdout
    for cmd in ("train-teacher", "distill", "self-train", "evaluate", "compare", "reproduce", "models"):
        assert cmd in out
    assert "--teacher-epoch" in run("distill", "--help").stdout


def test_models_lists_official_counts():
    out = run("models", "--num-classes", "100").stdout
    assert "resnet18" in out and "11,220,132" in out
    assert "resnext29_8x64d" in out and "34,518,948" in out


def test_teacher_run_directory(teacher):
    names = {p.name for p in teacher.iterdir()}
    assert {"recipe.yaml", "metrics.csv", "last.pt", "best.pt", "epoch_1.pt", "summary.json"} <= names
    s = json.loads((teacher / "summary.json").read_text())
    assert s["status"] == "finished" and s["epochs_done"] == 2 and s["seed"] == 0
    for key in ("best", "last"):
        assert set(s[key]) >= {"top1", "top5", "nll", "ece", "epoch", "train_top1"}
    assert s["torch"] == torch.__version__ and s["device"] == "cpu" and s["images_per_s"] > 0
    assert "git_commit" in s and "hardware" in s and s["train_time_s"] > 0
    rows = (teacher / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,train_top1,test_top1,test_top5,test_nll,test_ece")
    assert len(rows) == 3
    ck = torch.load(teacher / "last.pt", weights_only=True)
    assert ck["format"] == "tfkd" and ck["version"] == 1 and len(ck["recipe_hash"]) == 16
    assert {"model", "optimizer", "rng", "state", "arch"} <= set(ck)


@pytest.mark.slow  # trains real CLI runs for 15-30 s; kept out of the quick loop
def test_digits_default_learns(tmp_path):
    """The README's quick job: the digits profile reaches far above chance (10%)."""
    out = tmp_path / "quick"
    r = run("train-teacher", "--dataset", "digits", "--quiet", "--epochs", "6", "--out", out)
    s = json.loads((out / "summary.json").read_text())
    assert s["best"]["top1"] > 60, r.stdout


@pytest.mark.parametrize("extra", [[], ["--teacher-epoch", "1"]], ids=["kd", "de-kd"])
def test_distill(teacher, tmp_path, extra):
    out = tmp_path / "mv2"
    run("distill", "--student", "mobilenetv2", "--teacher", teacher, *extra, *TINY, "--out", out,
        "--set", "loss.alpha=0.9", "--set", "loss.temperature=4")
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "kd" and s["model"] == "mobilenetv2"
    t = s["teacher"]
    assert t["source"] == "tfkd-run" and len(t["sha256"]) == 64 and 0 <= t["test"]["top1"] <= 100
    assert t["file"].endswith("epoch_1.pt" if extra else "best.pt")


def assert_trained(out, method: str, loss: dict) -> dict:
    """What a finished 1-epoch run must leave: its files and nothing else, one metrics row, a
    summary with sane accuracies, and the loss it trained with: the recipe's `method` with the
    parameters `loss`, whose non-label term really pulled on the logits (teacher_share > 0; 0 for ce)."""
    assert {p.name for p in out.iterdir()} == {"recipe.yaml", "metrics.csv", "timings.csv", "last.pt",
                                                "best.pt", "summary.json"}
    s = json.loads((out / "summary.json").read_text())
    assert (s["status"], s["method"], s["epochs"], s["epochs_done"]) == ("finished", method, 1, 1)
    for key in ("best", "last"):
        assert s[key]["epoch"] == 1 and 0 <= s[key]["top1"] <= s[key]["top5"] <= 100
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert 0 < float(rows[0]["train_loss"]) < 100 and float(rows[0]["test_top1"]) == s["last"]["top1"]
    recipe = from_dict(yaml.safe_load((out / "recipe.yaml").read_text()))
    assert recipe.method == method and recipe.loss_params() == {**METHODS[method].defaults, **loss}
    assert 0 < s["diagnostics"]["teacher_share"] < 1 and float(rows[0]["teacher_share"]) > 0
    return s


def test_self_train(teacher, tmp_path):
    out = tmp_path / "self"
    run("self-train", "--model", "resnet18", "--teacher", teacher, *TINY, "--out", out,
        "--set", "loss.multiplier=50", "--set", "loss.temperature=6")
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "kd_self" and s["status"] == "finished"
    assert_trained(out, "kd_self", {"multiplier": 50.0, "temperature": 6.0})
    assert s["teacher"]["sha256"] == sha256(teacher / "best.pt")  # the teacher's own best epoch


@pytest.mark.parametrize("method", ["tfkd_reg", "lsr"])
def test_teacher_free_methods(tmp_path, method):
    out = tmp_path / method
    run("train-teacher", "--method", method, *TINY, "--out", out)
    assert json.loads((out / "summary.json").read_text())["method"] == method
    s = assert_trained(out, method, {})
    assert s["teacher"] is None  # teacher-free: no file was read


def test_evaluate_and_compare(teacher, tmp_path):
    rows = json.loads(run("evaluate", teacher, "--json", "--device", "cpu").stdout)
    assert [r["checkpoint"] for r in rows] == ["best", "last"]
    s = json.loads((teacher / "summary.json").read_text())
    last = next(r for r in rows if r["checkpoint"] == "last")
    assert last["top1"] == pytest.approx(s["last"]["top1"], abs=1e-3)
    assert {"top5", "nll", "ece"} <= set(last)
    out = run("compare", teacher, teacher, "--format", "csv").stdout
    assert "best top-1" in out and out.count("resnet18") == 2


def test_finished_run_is_not_overwritten(teacher):
    before = (teacher / "summary.json").read_text()
    r = run("train-teacher", *TINY, "--epochs", "2", "--out", teacher, ok=False)
    assert r.exit_code == 2 and "already holds a finished run" in r.stderr
    assert (teacher / "summary.json").read_text() == before


def test_dry_run_prints_resolved_recipe():
    out = run("distill", "--student", "mv2".replace("mv2", "mobilenetv2"), "--teacher", "somewhere",
              "--dataset", "digits", "--dry-run").stdout
    assert "method: kd" in out and "path: somewhere" in out


# -- the authors' checkpoint format (issue 7) ----------------------------------------

@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A folder laid out like pretrained_teacher_models.zip: base_resnet18/{best,0}.pth.tar,
    official dicts with state_dict (DataParallel `module.` keys), optim_dict and epoch."""
    root = tmp_path_factory.mktemp("release")
    d = root / "base_resnet18"
    d.mkdir()
    torch.manual_seed(0)
    net = build_model("resnet18", num_classes=10)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    for name, epoch in (("best.pth.tar", 200), ("0.pth.tar", 1)):
        torch.save({"epoch": epoch, "state_dict": sd,
                    "optim_dict": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}, d / name)
    return root


def test_official_checkpoint_evaluates(release):
    rows = json.loads(run("evaluate", release / "base_resnet18" / "best.pth.tar", "--model", "resnet18",
                          "--dataset", "digits", "--json", "--device", "cpu").stdout)
    assert rows[0]["model"] == "resnet18" and rows[0]["epoch"] == 200 and 0 <= rows[0]["top1"] <= 100


def test_official_checkpoint_needs_architecture(release):
    r = run("evaluate", release / "base_resnet18" / "best.pth.tar", "--dataset", "digits", ok=False)
    assert r.exit_code == 2 and "official-format checkpoint" in r.stderr


@pytest.mark.slow  # trains real CLI runs for 15-30 s; kept out of the quick loop
def test_official_release_folder_as_dekd_teacher(release, tmp_path):
    out = tmp_path / "dekd"
    run("distill", "--student", "mobilenetv2", "--teacher", release / "base_resnet18", "--teacher-model",
        "resnet18", "--teacher-epoch", "1", *TINY, "--out", out)
    t = json.loads((out / "summary.json").read_text())["teacher"]
    assert t["source"] == "official" and t["file"].endswith("base_resnet18/0.pth.tar")
    assert len(t["sha256"]) == 64


def test_teacher_of_other_architecture_is_refused(release, tmp_path):
    r = run("distill", "--student", "mobilenetv2", "--teacher", release / "base_resnet18" / "best.pth.tar",
            "--teacher-model", "resnet50", *TINY, "--out", tmp_path / "x", ok=False)
    assert r.exit_code == 2 and "does not fit model resnet50" in r.stderr
    assert "Traceback" not in r.stderr


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_malicious_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth.tar"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f)
    r = run("evaluate", bad, "--model", "resnet18", "--dataset", "digits", ok=False)
    assert r.exit_code == 2 and "refused to load" in r.stderr
    assert not marker.exists()
    # torch's zip format with a malicious payload too
    bad2 = tmp_path / "evil2.pt"
    torch.save({"state_dict": _Evil(marker)}, bad2)
    r = run("evaluate", bad2, "--model", "resnet18", "--dataset", "digits", ok=False)
    assert r.exit_code == 2 and "refused to load" in r.stderr
    assert not marker.exists()


@pytest.mark.slow  # trains real CLI runs for 15-30 s; kept out of the quick loop
def test_teacher_logits_shared_between_students(teacher, tmp_path):
    """A second student of the same teacher on the same batches reads the teacher's logits
    instead of running it, and ends with exactly the weights of a run without the cache."""
    args = ["distill", "--student", "mobilenetv2", "--teacher", teacher, *TINY, "--epochs", "2"]
    run(*args, "--out", tmp_path / "a")
    run(*args, "--out", tmp_path / "b")
    run(*args, "--out", tmp_path / "c", "--set", "runtime.teacher_cache=false")
    sa, sb, sc = (json.loads((tmp_path / n / "summary.json").read_text()) for n in "abc")
    assert (sa["teacher_cache"]["epochs_computed"], sa["teacher_cache"]["epochs_reused"]) == (2, 0)
    assert (sb["teacher_cache"]["epochs_computed"], sb["teacher_cache"]["epochs_reused"]) == (0, 2)
    assert "teacher_cache" not in sc
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    wc = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wb[k], wc[k]) for k in wb)
    assert (tmp_path / "b" / "metrics.csv").read_text() == (tmp_path / "c" / "metrics.csv").read_text()


@pytest.mark.parametrize("threads, kept", [(2, True), (1, True)])
def test_channels_last_on_a_multithreaded_cpu_is_kept_not_crashed(tmp_path, threads, kept):
    """torch 2.14's CPU backward of a strided 1x1 conv in channels_last segfaults on odd batches
    with >1 thread; digits' last batch (1437 % 128 = 29) is odd and ResNet18 has such convs.
    channels_last stays on: tfkd_cli.training.channels_last runs that one step with one thread.
    A subprocess, so that a crash fails this test instead of killing the test session."""
    out = tmp_path / "run"
    p = run_cli(["train-teacher", *TINY, "--channels-last", "--set", f"runtime.threads={threads}", "--out", out],
                timeout=900)  # 2 threads on a shared 2-core machine are slow
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["channels_last"] is kept
    assert ("channels_last is off" in p.stderr) is (not kept)
