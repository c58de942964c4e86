"""The public Python API (issue #24): README's own-loop example runs as written, every loss module
equals the CLI's loss bit for bit, and a bad parameter is a ValueError with the CLI's line."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch
import torchvision

import tfkd_cli
from tfkd_cli import losses
from tfkd_cli.methods import METHODS, build_loss
from tfkd_cli.config.recipe import resolve_run

from conftest import ROOT, fail


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _cli_loss(method: str, **loss):
    """The loss a CLI run trains with: the recipe resolved as `tfkd train-teacher` resolves it,
    built as build_run builds it."""
    teacher = {"path": "runs/teacher"} if METHODS[method].needs_teacher else {}  # only named, never read
    r = resolve_run(overrides={"method": method, "loss": loss, "teacher": teacher, "data": {"dataset": "digits"}})
    return build_loss(r.method, uniform_teacher=r.teacher.uniform, **r.loss_params())


def test_readme_own_loop_example_trains_with_the_clis_tfkd_reg_loss_bit_for_bit():
    code = _readme_block("Use Tf-KD in your own training loop")
    assert len(code.strip().splitlines()) <= 25
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), ns)
    printed = out.getvalue().strip().splitlines()
    assert [p.split(":")[0] for p in printed] == ["step 0", "step 1", "step 2"]
    assert isinstance(ns["model"], torchvision.models.ResNet) and ns["loss"].requires_grad

    # The same loop driven by the CLI's loss: every step's loss is the README's, bit for bit.
    cli_loss = _cli_loss("tfkd_reg", alpha=0.1, temperature=20, multiplier=100)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images, labels = torch.randn(8, 3, 64, 64), torch.randint(0, 12, (8,))
    for step in range(3):
        logits = model(images)
        loss = cli_loss(logits, labels)
        assert torch.equal(ns["loss_fn"](logits, labels), loss)
        assert f"loss {loss.item():.4f}," in printed[step]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(loss, ns["loss"])  # the README's last loss, after its own three updates
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ns["model"].state_dict().values()))


MODULES = [  # (module, the same loss as a recipe's method and loss section)
    (losses.CE(), "ce", {}),
    (losses.CE(label_weight=0.05), "ce", {"label_weight": 0.05}),
    (losses.KD(alpha=0.95, temperature=20), "kd", {"alpha": 0.95, "temperature": 20, "multiplier": 1}),
    (losses.KD(alpha=0.9, temperature=4, semantics="paper"), "kd",
     {"alpha": 0.9, "temperature": 4, "multiplier": 1, "semantics": "paper"}),
    (losses.KDSelf(alpha=0.95, temperature=6, multiplier=50), "kd_self", {"alpha": 0.95, "temperature": 6, "multiplier": 50}),
    (losses.TfKDReg(alpha=0.1, temperature=20, multiplier=100), "tfkd_reg",
     {"alpha": 0.1, "temperature": 20, "multiplier": 100}),
    (losses.TfKDReg(alpha=0.95, temperature=40, multiplier=1, semantics="paper"), "tfkd_reg",
     {"alpha": 0.95, "temperature": 40, "multiplier": 1, "semantics": "paper"}),
    (losses.LSR(epsilon=0.1), "lsr", {"epsilon": 0.1}),
    (losses.LSR(epsilon=0.2, semantics="paper"), "lsr", {"epsilon": 0.2, "semantics": "paper"}),
]


@pytest.mark.parametrize("module,method,loss", MODULES, ids=lambda v: repr(v) if isinstance(v, torch.nn.Module) else None)
def test_each_loss_module_equals_the_clis_loss_bit_for_bit(module, method, loss):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 12, generator=g) * 4
    t, y = torch.randn(16, 12, generator=g) * 4, torch.randint(0, 12, (16,), generator=g)
    want = _cli_loss(method, **loss)(z, y, t)
    assert torch.equal(module(z, y, t), want)
    assert torch.equal(getattr(losses, method)(z, y, t, **module.params), want)  # the function, same params
    assert isinstance(module, METHODS[method].module)


@pytest.mark.parametrize("cls,kw", [(losses.KD, dict(alpha=0.95, temperature=20)),
                                    (losses.TfKDReg, dict(alpha=0.1, temperature=20, multiplier=100))])
def test_uniform_teacher_control_module_equals_the_clis_control(cls, kw):
    z, y = torch.randn(8, 10, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    method = cls.method
    cli = resolve_run(overrides={"method": method, "loss": kw, "teacher": {"uniform": True}, "data": {"dataset": "digits"}})
    want = build_loss(method, uniform_teacher=True, **cli.loss_params())(z, y)
    assert torch.equal(cls(**kw, uniform_teacher=True)(z, y), want)


def test_teacher_share_of_a_batch_matches_the_run_diagnostics():
    g = torch.Generator().manual_seed(0)
    z, t, y = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    kd = losses.KD(alpha=0.95, temperature=20)
    gl, gt = tfkd_cli.diagnostics.term_norms("kd", z, y, t, alpha=0.95, temperature=20.0).tolist()
    assert kd.teacher_share(z, y, t) == pytest.approx(gt / (gl + gt), rel=1e-12)
    assert tfkd_cli.teacher_share("kd", z, y, t, alpha=0.95, temperature=20.0) == kd.teacher_share(z, y, t)
    assert losses.CE().teacher_share(z, y) == 0.0


@pytest.mark.parametrize("build,flag", [
    (lambda: losses.TfKDReg(alpha=1.5, temperature=20, multiplier=100), ["--set", "loss.alpha=1.5"]),
    (lambda: losses.KD(alpha=0.9, temperature=0), ["--set", "loss.temperature=0"]),
    (lambda: losses.LSR(epsilon=1.0), ["--set", "loss.epsilon=1.0", "--method", "lsr"]),
    (lambda: losses.CE(label_weight=0), ["--set", "loss.label_weight=0"]),
    (lambda: losses.KD(alpha=0.9, temperature=4, semantics="papers"), ["--set", "loss.semantics=papers"]),
])
def test_bad_parameter_is_a_value_error_with_the_line_the_cli_prints(build, flag):
    with pytest.raises(ValueError) as e:
        build()
    assert isinstance(e.value, tfkd_cli.ConfigError)
    line = fail(["train-teacher", "--dataset", "digits", "--dry-run", "--method", "tfkd_reg", *flag])
    assert line == f"tfkd: error: --set: {e.value}"  # the layer that set it


def test_public_names_are_listed_and_import():
    assert set(losses.__all__) >= {"ce", "kd", "kd_self", "tfkd_reg", "lsr", "CE", "KD", "KDSelf", "TfKDReg", "LSR"}
    for name in tfkd_cli.__all__:
        assert getattr(tfkd_cli, name) is not None
    model = tfkd_cli.build_model("tv:resnet18", num_classes=12).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tfkd_cli.eval_model(model)(x), model(x), atol=1e-4)
