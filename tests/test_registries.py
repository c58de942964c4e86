"""Methods and datasets are declared once, and everything reads them: the recipe's loss
section and loss defaults (`tfkd_cli.methods.METHODS`), the CLI's help and teacher rules, the
cost model's dataset sizes and the reference transforms (`tfkd_cli.data.registry.DATASETS`)."""

import dataclasses

import pytest
from click.testing import CliRunner

from tfkd_cli.cli.main import cli
from tfkd_cli.data.registry import DATASETS
from tfkd_cli.losses import PARAMS
from tfkd_cli.methods import METHODS, build_loss
from tfkd_cli.config.recipe import LossCfg, Recipe, from_dict
from tfkd_cli.execution import cost


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
