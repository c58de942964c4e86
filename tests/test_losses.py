"""Golden tests: every loss against an independent hand computation (plain Python loops over
float64 numbers, written from the formulas in tables.md §2.2, not from our code)."""

import math

import pytest
import torch

from tfkd_cli.errors import TfkdError
from tfkd_cli.losses import virtual_teacher
from tfkd_cli.methods import build_loss

N, K = 5, 7


def _softmax(row, T=1.0):
    m = max(v / T for v in row)
    e = [math.exp(v / T - m) for v in row]
    s = sum(e)
    return [x / s for x in e]


def _ce(z, y):
    return sum(-math.log(_softmax(z[i])[y[i]]) for i in range(len(y))) / len(y)


def _kl_sum(p_rows, q_rows):
    """sum_i sum_k p log(p/q), with 0 log 0 = 0 (KLDivLoss's convention)."""
    return sum(p * (math.log(p) - math.log(q)) if p > 0 else 0.0
               for pr, qr in zip(p_rows, q_rows) for p, q in zip(pr, qr))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(N, K, generator=g, dtype=torch.float64) * 3
    t = torch.randn(N, K, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, K, (N,), generator=g)
    return z, t, y, z.tolist(), t.tolist(), y.tolist()


def test_ce(batch):
    z, _, y, zl, _, yl = batch
    assert build_loss("ce")(z, y).item() == pytest.approx(_ce(zl, yl), abs=1e-6)


@pytest.mark.parametrize("semantics,divisor", [("official", N * K), ("paper", N)])
@pytest.mark.parametrize("alpha,T,mult", [(0.95, 20.0, 1.0), (0.6, 4.0, 1.0), (0.9, 6.0, 50.0)])
@pytest.mark.parametrize("name", ["kd", "kd_self"])
def test_kd(batch, name, semantics, divisor, alpha, T, mult):
    z, t, y, zl, tl, yl = batch
    p = [_softmax(r, T) for r in tl]
    q = [_softmax(r, T) for r in zl]
    want = (1 - alpha) * _ce(zl, yl) + alpha * T * T * mult * _kl_sum(p, q) / divisor
    got = build_loss(name, alpha=alpha, temperature=T, multiplier=mult, semantics=semantics)(z, y, t)
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_kd_needs_teacher(batch):
    z, _, y, *_ = batch
    with pytest.raises(TfkdError, match="teacher"):
        build_loss("kd")(z, y)


def test_virtual_teacher():
    y = torch.tensor([0, 3])
    p = virtual_teacher(y, 5, 0.99)
    assert p[0].tolist() == pytest.approx([0.99, 0.0025, 0.0025, 0.0025, 0.0025])
    assert p[1, 3].item() == pytest.approx(0.99)
    assert p.sum(1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("alpha,T,mult", [(0.95, 40.0, 1.0), (0.1, 20.0, 100.0), (0.1, 40.0, 50.0)])
@pytest.mark.parametrize("semantics", ["official", "paper"])
def test_tfkd_reg(batch, semantics, alpha, T, mult):
    z, _, y, zl, _, yl = batch
    # official: target softmax(p^d / T) (softmax of probabilities), student log_softmax(z), KL / (N*K)
    # paper:    same target, tempered student log_softmax(z / T), KL / N
    pd = [[0.99 if k == yl[i] else 0.01 / (K - 1) for k in range(K)] for i in range(N)]
    target = [_softmax(r, T) for r in pd]
    student_T = T if semantics == "paper" else 1.0
    q = [_softmax(r, student_T) for r in zl]
    div = N * K if semantics == "official" else N
    want = (1 - alpha) * _ce(zl, yl) + alpha * mult * _kl_sum(target, q) / div
    got = build_loss("tfkd_reg", alpha=alpha, temperature=T, multiplier=mult, semantics=semantics)(z, y)
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_tfkd_reg_target_is_nearly_uniform():
    """tables.md §2.2: at K=100, T=40 the target is 0.010248 on the true class vs 0.009997."""
    k, T = 100, 40.0
    pd = virtual_teacher(torch.tensor([3]), k, 0.99)
    target = torch.softmax(pd / T, dim=1)[0]
    assert target[3].item() == pytest.approx(0.010248, abs=1e-6)
    assert target[0].item() == pytest.approx(0.009997, abs=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("semantics", ["official", "paper"])
def test_lsr(batch, semantics, eps):
    z, _, y, zl, _, yl = batch
    if semantics == "official":  # 1-eps on y, eps/(K-1) elsewhere
        tgt = [[1 - eps if k == yl[i] else eps / (K - 1) for k in range(K)] for i in range(N)]
    else:  # (1-eps) q + eps/K
        tgt = [[(1 - eps) * (k == yl[i]) + eps / K for k in range(K)] for i in range(N)]
    want = sum(-sum(tgt[i][k] * math.log(_softmax(zl[i])[k]) for k in range(K)) for i in range(N)) / N
    got = build_loss("lsr", epsilon=eps, semantics=semantics)(z, y)
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_official_kd_equals_torch_kldiv_mean(batch):
    """The official quirk: nn.KLDivLoss() default reduction='mean' divides by N*K."""
    z, t, y, *_ = batch
    T, a = 20.0, 0.95
    kl = torch.nn.functional.kl_div(torch.log_softmax(z / T, 1), torch.softmax(t / T, 1), reduction="sum") / (N * K)
    want = (1 - a) * torch.nn.functional.cross_entropy(z, y) + a * T * T * kl
    assert build_loss("kd", alpha=a, temperature=T)(z, y, t).item() == pytest.approx(want.item(), abs=1e-6)


def test_gradients_flow_to_student_only(batch):
    z, t, y, *_ = batch
    z = z.clone().requires_grad_()
    t = t.clone().requires_grad_()
    build_loss("kd", alpha=0.9, temperature=4.0)(z, y, t).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert t.grad is None


def test_unknown_name_and_params():
    with pytest.raises(TfkdError, match="unknown method 'bogus'"):
        build_loss("bogus")
    with pytest.raises(TfkdError, match="unknown loss parameter"):
        build_loss("kd", beta=1.0)
    with pytest.raises(TfkdError, match="semantics"):
        build_loss("kd", semantics="other")


def test_no_python_loop_over_samples():
    """Vectorised: a batch of 4096 x 100 is computed in one pass (the official loop would take ~0.1 s),
    and that pass is the batch mean of the same loss taken one sample at a time."""
    z = torch.randn(4096, 100)
    y = torch.randint(0, 100, (4096,))
    loss = build_loss("tfkd_reg", alpha=0.95, temperature=40.0)
    out = loss(z, y)
    assert torch.isfinite(out)
    z64 = z.double()
    batch = loss(z64, y)
    one_by_one = torch.stack([loss(z64[i:i + 1], y[i:i + 1]) for i in range(len(y))]).mean()
    assert batch.shape == () and float(batch) == pytest.approx(float(one_by_one), rel=1e-12)
    assert float(out) == pytest.approx(float(batch), rel=1e-5)  # float32 pass, same value
