"""Golden tests: the closed-form term gradients of tfkd_cli.diagnostics against autograd of the
real losses (tfkd_cli.losses) on fixed float64 inputs, for every method and both semantics.

The label term's reference is autograd of (weight x F.cross_entropy); the teacher term's is
autograd of (build_loss(...) - label term), so the split is tied to the loss actually trained."""

import math

import pytest
import torch
import torch.nn.functional as F

from tfkd_cli.diagnostics import EpochDiagnostics, share, term_grads, term_norms
from tfkd_cli.errors import TfkdError
from tfkd_cli.methods import build_loss

N, K = 6, 9
SEMANTICS = ("official", "paper")
# every official recipe family (tables.md §2.4, issue #17) plus a tempered kd
KD_PARAMS = [dict(alpha=0.95, temperature=20.0), dict(alpha=0.6, temperature=20.0),
             dict(alpha=0.95, temperature=6.0, multiplier=50.0), dict(alpha=0.9, temperature=4.0)]
REG_PARAMS = [dict(alpha=0.95, temperature=40.0, multiplier=1.0), dict(alpha=0.1, temperature=20.0, multiplier=100.0),
              dict(alpha=0.5, temperature=3.0, multiplier=2.0, correct_prob=0.9)]


@pytest.fixture(params=[1.0, 8.0], ids=["scale1", "scale8"])
def batch(request):
    g = torch.Generator().manual_seed(11)
    z = torch.randn(N, K, generator=g, dtype=torch.float64) * request.param
    t = torch.randn(N, K, generator=g, dtype=torch.float64) * request.param
    y = torch.randint(0, K, (N,), generator=g)
    return z, t, y


def _autograd(loss_fn, z):
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(z), z)
    return grad


def _check(method, z, y, t, label_loss, full_loss, **params):
    """Closed form vs autograd, as matrices and as the reported norms."""
    want_label = _autograd(label_loss, z)
    want_teacher = _autograd(lambda zz: full_loss(zz) - label_loss(zz), z)
    got_label, got_teacher = term_grads(method, z, y, t, **params)
    torch.testing.assert_close(got_label, want_label, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_teacher, want_teacher, rtol=1e-9, atol=1e-12)
    norms = term_norms(method, z, y, t, **params)
    # the reported norm: sum of row norms of the batch-loss gradient = mean per-sample norm
    assert norms[0].item() == pytest.approx(want_label.norm(dim=1).sum().item(), rel=1e-9)
    assert norms[1].item() == pytest.approx(want_teacher.norm(dim=1).sum().item(), rel=1e-9)
    assert norms[1].item() > 0


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("params", KD_PARAMS, ids=lambda p: "-".join(f"{k}{v:g}" for k, v in p.items()))
@pytest.mark.parametrize("method", ["kd", "kd_self"])
def test_kd(batch, method, params, semantics):
    z, t, y = batch
    loss = build_loss(method, semantics=semantics, **params)
    a = params["alpha"]
    _check(method, z, y, t, lambda zz: (1 - a) * F.cross_entropy(zz, y), lambda zz: loss(zz, y, t),
           semantics=semantics, **params)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("params", KD_PARAMS, ids=lambda p: "-".join(f"{k}{v:g}" for k, v in p.items()))
@pytest.mark.parametrize("method", ["kd", "kd_self"])
def test_kd_uniform_teacher(batch, method, params, semantics):
    """Uniform control = the method's own loss with all-zero teacher logits (softmax = 1/K)."""
    z, _, y = batch
    loss = build_loss(method, semantics=semantics, **params)
    zeros = torch.zeros_like(z)
    a = params["alpha"]
    _check(method, z, y, None, lambda zz: (1 - a) * F.cross_entropy(zz, y), lambda zz: loss(zz, y, zeros),
           semantics=semantics, uniform_teacher=True, **params)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("params", REG_PARAMS, ids=lambda p: "-".join(f"{k}{v:g}" for k, v in p.items()))
def test_tfkd_reg(batch, params, semantics):
    z, _, y = batch
    loss = build_loss("tfkd_reg", semantics=semantics, **params)
    a = params["alpha"]
    _check("tfkd_reg", z, y, None, lambda zz: (1 - a) * F.cross_entropy(zz, y), lambda zz: loss(zz, y),
           semantics=semantics, **params)


def _kl_uniform(zz, semantics, T):
    """KL(u || softmax(student)) with KLDivLoss's official 'mean' or the paper's batch mean."""
    student = zz if semantics == "official" else zz / T
    n, k = zz.shape
    kl = F.kl_div(F.log_softmax(student, dim=1), torch.full_like(zz, 1.0 / k), reduction="sum")
    return kl / (n * k if semantics == "official" else n)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("params", REG_PARAMS, ids=lambda p: "-".join(f"{k}{v:g}" for k, v in p.items()))
def test_tfkd_reg_uniform_teacher(batch, params, semantics):
    """Uniform control: the virtual teacher's target replaced by 1/K, same a, m and student form."""
    z, _, y = batch
    a, m, T = params["alpha"], params["multiplier"], params["temperature"]
    label = lambda zz: (1 - a) * F.cross_entropy(zz, y)  # noqa: E731
    full = lambda zz: label(zz) + a * m * _kl_uniform(zz, semantics, T)  # noqa: E731
    _check("tfkd_reg", z, y, None, label, full, semantics=semantics, uniform_teacher=True, **params)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_lsr(batch, semantics, eps):
    """LSR = (1-eps) CE + eps H(u, p): the label term is (1-eps) CE, the rest is the teacher term."""
    z, _, y = batch
    loss = build_loss("lsr", epsilon=eps, semantics=semantics)
    _check("lsr", z, y, None, lambda zz: (1 - eps) * F.cross_entropy(zz, y), lambda zz: loss(zz, y),
           epsilon=eps, semantics=semantics)


@pytest.mark.parametrize("w", [1.0, 0.4, 0.05])
def test_ce_label_weight(batch, w):
    z, _, y = batch
    want = _autograd(lambda zz: w * build_loss("ce")(zz, y), z)
    label, teacher = term_grads("ce", z, y, label_weight=w)
    assert teacher is None
    torch.testing.assert_close(label, want, rtol=1e-9, atol=1e-12)
    norms = term_norms("ce", z, y, label_weight=w)
    assert norms.tolist() == pytest.approx([want.norm(dim=1).sum().item(), 0.0], rel=1e-9)
    assert share(*norms.tolist()) == 0.0


def test_norm_is_batch_size_free(batch):
    """The per-sample mean: a batch and itself repeated twice give the same norms."""
    z, t, y = batch
    one = term_norms("kd", z, y, t, alpha=0.6, temperature=20.0)
    two = term_norms("kd", torch.cat([z, z]), torch.cat([y, y]), torch.cat([t, t]), alpha=0.6, temperature=20.0)
    torch.testing.assert_close(one, two, rtol=1e-12, atol=0)


def test_label_term_matches_ce_scaled(batch):
    """kd's label term is exactly (1-a) x ce's: the control ce with label_weight = 1-a has the same pull."""
    z, t, y = batch
    kd = term_norms("kd", z, y, t, alpha=0.95, temperature=20.0)
    ctrl = term_norms("ce", z, y, label_weight=0.05)
    assert kd[0].item() == pytest.approx(ctrl[0].item(), rel=1e-12)


def test_bf16_logits_and_no_graph(batch):
    z, t, y = batch
    zb = z.float().bfloat16().requires_grad_(True)
    norms = term_norms("kd", zb, y, t.bfloat16(), alpha=0.9, temperature=4.0)
    assert norms.dtype == torch.float32 and not norms.requires_grad
    want = term_norms("kd", zb.detach().float(), y, t.bfloat16().float(), alpha=0.9, temperature=4.0)
    torch.testing.assert_close(norms, want)


def test_errors(batch):
    z, _, y = batch
    with pytest.raises(TfkdError, match="teacher logits"):
        term_norms("kd", z, y, None, alpha=0.9, temperature=4.0)
    with pytest.raises(TfkdError, match="choose from: ce, kd"):
        term_norms("mixup", z, y)


def test_epoch_accumulator(batch):
    z, t, y = batch
    acc = EpochDiagnostics()
    assert acc.row() == {"grad_label": None, "grad_teacher": None, "teacher_share": None}
    a = term_norms("kd", z, y, t, alpha=0.6, temperature=20.0)
    b = term_norms("kd", z * 3, y, t, alpha=0.6, temperature=20.0)
    acc.add(a)
    acc.add(b)
    row = acc.row()
    gl, gt = ((a + b) / 2).tolist()
    assert row["grad_label"] == pytest.approx(gl) and row["grad_teacher"] == pytest.approx(gt)
    assert row["teacher_share"] == pytest.approx(gt / (gl + gt))
    assert share(0.0, 0.0) is None and math.isclose(share(1.0, 3.0), 0.75)


def test_epoch_sums_keep_the_diagnostics_across_a_mid_epoch_checkpoint():
    """The diagnostics' epoch sums go into a mid-epoch checkpoint's acc and come back bit for bit,
    so a resumed epoch writes the same grad_label/grad_teacher/teacher_share as an uninterrupted one."""
    from tfkd_cli.diagnostics import term_norms
    from tfkd_cli.training.state import EpochSums
    from tfkd_cli.training.runtime import Dist
    from tfkd_cli.training.state import State

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 10, generator=g) * 4, torch.randint(0, 10, (8,), generator=g)) for _ in range(4)]
    norms = [term_norms("kd", z, y, uniform_teacher=True, alpha=0.95, temperature=20.0) for z, y in batches]
    whole = EpochSums(State().acc, Dist(), torch.device("cpu"))
    first = EpochSums(State().acc, Dist(), torch.device("cpu"))
    for n in norms:
        whole.diag.add(n)
    for n in norms[:2]:
        first.diag.add(n)
    resumed = EpochSums(first.snapshot(), Dist(), torch.device("cpu"))
    for n in norms[2:]:
        resumed.diag.add(n)
    assert resumed.totals()["diag"] == whole.totals()["diag"]
    row = whole.totals()["diag"]
    assert row["teacher_share"] == pytest.approx(row["grad_teacher"] / (row["grad_label"] + row["grad_teacher"]))
    empty = EpochSums(State().acc, Dist(), torch.device("cpu")).totals()["diag"]
    assert empty == {"grad_label": None, "grad_teacher": None, "teacher_share": None}
