"""Loss functions of the paper, as pure functions of logits and labels.

Notation: z student logits (N x K), t teacher logits, y labels, q = one-hot(y),
CE = mean_i -log softmax(z_i)[y_i], s_T = softmax(./T), T temperature, a alpha, m multiplier.

Two semantics, chosen per loss with `semantics=`:

* ``official`` (default) reproduces the official code to 1e-6, including
  ``nn.KLDivLoss()``'s default ``reduction='mean'``, which divides the summed KL by N*K
  (not N): every KL term is the batch-mean KL divided by K.
* ``paper`` follows the paper's equations: batch-mean KL (divide by N), a tempered
  student in Tf-KD_reg, and LSR with eps*u(k) = eps/K.

`build_loss(name, **params)` returns ``loss(student_logits, labels, teacher_logits=None)``.
Everything is vectorised: no per-sample Python loop (the official Tf-KD_reg has one).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tfkd_cli.errors import TfkdError

SEMANTICS = ("official", "paper")


def _f32(x: Tensor) -> Tensor:
    """At least float32 (AMP gives bf16 logits); float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(target: Tensor, log_q: Tensor, semantics: str) -> Tensor:
    """sum_ik target*(log target - log_q), divided by N*K (official) or N (paper)."""
    elem = torch.xlogy(target, target) - target * log_q
    n, k = log_q.shape
    return elem.sum() / (n * k if semantics == "official" else n)


def ce(z: Tensor, y: Tensor, t: Optional[Tensor] = None, **_: object) -> Tensor:
    """Cross-entropy: CE = mean_i -log softmax(z_i)[y_i]."""
    return F.cross_entropy(z, y)


def kd(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, alpha: float = 0.9,
       temperature: float = 20.0, multiplier: float = 1.0, semantics: str = "official",
       **_: object) -> Tensor:
    """Knowledge distillation (Hinton et al.), official `loss_kd` / `loss_kd_self`.

    L = (1 - a) * CE + a * T^2 * m * KL(s_T(t) || s_T(z)) / R,
    R = N*K (official, KLDivLoss 'mean') or N (paper).
    With m = 1 this is `loss_kd`; Tf-KD_self (`loss_kd_self`) is the same with its multiplier.
    """
    if t is None:
        raise TfkdError("method kd needs teacher logits (set --teacher)")
    T = temperature
    soft = F.softmax(_f32(t.detach()) / T, dim=1)
    kl = _kl(soft, F.log_softmax(_f32(z) / T, dim=1), semantics)
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * T * T * multiplier * kl


def kd_self(z: Tensor, y: Tensor, t: Optional[Tensor] = None, **params: object) -> Tensor:
    """Tf-KD_self: KD from a pre-trained copy of the student itself (`loss_kd_self`).

    L = (1 - a) * CE + a * T^2 * m * KL(s_T(t) || s_T(z)) / R   (same as `kd`).
    """
    return kd(z, y, t, **params)


def virtual_teacher(y: Tensor, k: int, correct_prob: float = 0.99, dtype: torch.dtype = torch.float32) -> Tensor:
    """The hand-designed teacher p^d: correct_prob on the true class, (1-correct_prob)/(K-1) elsewhere."""
    p = torch.full((y.shape[0], k), (1.0 - correct_prob) / (k - 1), device=y.device, dtype=dtype)
    return p.scatter_(1, y.unsqueeze(1), correct_prob)


def tfkd_reg(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, alpha: float = 0.1,
             temperature: float = 20.0, multiplier: float = 1.0, correct_prob: float = 0.99,
             semantics: str = "official", **_: object) -> Tensor:
    """Tf-KD_reg: KD from a hand-designed virtual teacher (`loss_kd_regularization`).

    target = softmax(p^d / T)   (softmax of probabilities, as in the official code)
    official: L = (1 - a) * CE + a * m * KL(target || softmax(z)) / (N*K)   (no T on z, no T^2)
    paper:    L = (1 - a) * CE + a * m * KL(target || softmax(z / T)) / N   (Eq. 9, tempered student)
    """
    k = z.shape[1]
    target = F.softmax(virtual_teacher(y, k, correct_prob, _f32(z).dtype) / temperature, dim=1)
    student = _f32(z) / (temperature if semantics == "paper" else 1.0)
    kl = _kl(target, F.log_softmax(student, dim=1), semantics)
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * multiplier * kl


def lsr(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, epsilon: float = 0.1,
        semantics: str = "official", **_: object) -> Tensor:
    """Label smoothing regularization (`loss_label_smoothing`).

    official: target = (1 - eps) on y, eps/(K-1) elsewhere
    paper:    target = (1 - eps) * q + eps/K   (Eq. 1, u uniform)
    L = mean_i -sum_k target_ik * log softmax(z_i)_k
    """
    n, k = z.shape
    if semantics == "official":
        target = torch.full_like(_f32(z), epsilon / (k - 1))
        target.scatter_(1, y.unsqueeze(1), 1.0 - epsilon)
    else:
        target = torch.full_like(_f32(z), epsilon / k)
        target.scatter_add_(1, y.unsqueeze(1), torch.full((n, 1), 1.0 - epsilon, device=z.device, dtype=target.dtype))
    return -(target * F.log_softmax(_f32(z), dim=1)).sum() / n


LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": ce,
    "kd": kd,
    "kd_self": kd_self,
    "tfkd_reg": tfkd_reg,
    "lsr": lsr,
}
NEEDS_TEACHER = {"kd", "kd_self"}
PARAMS = ("alpha", "temperature", "multiplier", "correct_prob", "epsilon", "semantics")


def build_loss(name: str, **params: object) -> Callable[..., Tensor]:
    """`loss(student_logits, labels, teacher_logits=None)` for a method name and its params."""
    if name not in LOSSES:
        raise TfkdError(f"unknown method {name!r}; choose from: {', '.join(LOSSES)}")
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise TfkdError(f"unknown loss parameter(s) {', '.join(sorted(unknown))}; allowed: {', '.join(PARAMS)}")
    if params.get("semantics", "official") not in SEMANTICS:
        raise TfkdError(f"semantics must be one of {', '.join(SEMANTICS)}, got {params['semantics']!r}")
    fn = functools.partial(LOSSES[name], **params)
    functools.update_wrapper(fn, LOSSES[name])
    return fn
