"""The paper's losses as pure functions of logits and labels, and the loss parameters
(`PARAMS`, `check_param`): the bottom of the loss stack. `grads` holds their closed-form logit
gradients, `methods` the registry, `losses` the public face (these functions and their
`nn.Module`s).

Notation: z student logits (N x K), t teacher logits, y labels, q = one-hot(y),
CE = mean_i -log softmax(z_i)[y_i], s_T = softmax(./T), T temperature, a alpha, m multiplier.

Two semantics, chosen per loss with `semantics=`:

* ``official`` (default) reproduces the official code to 1e-6, including
  ``nn.KLDivLoss()``'s default ``reduction='mean'``, which divides the summed KL by N*K
  (not N): every KL term is the batch-mean KL divided by K.
* ``paper`` follows the paper's equations: batch-mean KL (divide by N), a tempered
  student in Tf-KD_reg, and LSR with eps*u(k) = eps/K.

Two controls (issue #17) separate the teacher from the loss scaling: ``uniform_teacher=True``
(kd, kd_self, tfkd_reg; recipe ``teacher: {uniform: true}``) replaces the teacher's
distribution by the uniform u = 1/K in the method's own formula, and ce's ``label_weight`` w
gives w * CE, the label term of a method with alpha = 1 - w and nothing else.
Everything is vectorised: no per-sample Python loop (the official Tf-KD_reg has one).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tfkd_cli.errors import ConfigError

__all__ = ["ce", "kd", "kd_self", "tfkd_reg", "lsr", "virtual_teacher", "uniform", "PARAMS", "SEMANTICS",
           "Param", "check_param"]

SEMANTICS = ("official", "paper")


def _f32(x: Tensor) -> Tensor:
    """At least float32 (AMP gives bf16 logits); float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(target: Tensor, log_q: Tensor, semantics: str) -> Tensor:
    """sum_ik target*(log target - log_q), divided by N*K (official) or N (paper)."""
    elem = torch.xlogy(target, target) - target * log_q
    n, k = log_q.shape
    return elem.sum() / (n * k if semantics == "official" else n)


def uniform(z: Tensor) -> Tensor:
    """The uniform distribution u = 1/K over z's K classes, shaped and typed like z (the control's teacher)."""
    return torch.full_like(z, 1.0 / z.shape[1])


def ce(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, label_weight: float = 1.0, **_: object) -> Tensor:
    """Cross-entropy, weighted: L = w * CE, CE = mean_i -log softmax(z_i)[y_i] (w = 1: plain CE).

    The control of a row with alpha is w = 1 - alpha: its label term and nothing else.
    """
    loss = F.cross_entropy(z, y)
    return loss if label_weight == 1.0 else label_weight * loss  # w = 1 stays bit-identical


def kd(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, alpha: float, temperature: float,
       multiplier: float, semantics: str, uniform_teacher: bool = False, **_: object) -> Tensor:
    """Knowledge distillation (Hinton et al.), official `loss_kd` / `loss_kd_self`.

    L = (1 - a) * CE + a * T^2 * m * KL(s_T(t) || s_T(z)) / R,
    R = N*K (official, KLDivLoss 'mean') or N (paper).
    With m = 1 this is `loss_kd`; Tf-KD_self (`loss_kd_self`) is the same with its multiplier.
    uniform_teacher: s_T(t) is replaced by u = 1/K (no teacher logits needed).
    """
    T = temperature
    if uniform_teacher:
        soft = uniform(_f32(z))
    elif t is None:
        raise ConfigError("method kd needs teacher logits (set --teacher)")
    else:
        soft = F.softmax(_f32(t.detach()) / T, dim=1)
    kl = _kl(soft, F.log_softmax(_f32(z) / T, dim=1), semantics)
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * T * T * multiplier * kl


def kd_self(z: Tensor, y: Tensor, t: Optional[Tensor] = None, **params: object) -> Tensor:
    """Tf-KD_self: KD from a pre-trained copy of the student itself (`loss_kd_self`).

    L = (1 - a) * CE + a * T^2 * m * KL(s_T(t) || s_T(z)) / R   (same as `kd`).
    """
    return kd(z, y, t, **params)


def virtual_teacher(y: Tensor, k: int, correct_prob: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The hand-designed teacher p^d: correct_prob on the true class, (1-correct_prob)/(K-1) elsewhere."""
    p = torch.full((y.shape[0], k), (1.0 - correct_prob) / (k - 1), device=y.device, dtype=dtype)
    return p.scatter_(1, y.unsqueeze(1), correct_prob)


def tfkd_reg(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, alpha: float, temperature: float,
             multiplier: float, correct_prob: float, semantics: str, uniform_teacher: bool = False,
             **_: object) -> Tensor:
    """Tf-KD_reg: KD from a hand-designed virtual teacher (`loss_kd_regularization`).

    target = softmax(p^d / T)   (softmax of probabilities, as in the official code)
    official: L = (1 - a) * CE + a * m * KL(target || softmax(z)) / (N*K)   (no T on z, no T^2)
    paper:    L = (1 - a) * CE + a * m * KL(target || softmax(z / T)) / N   (Eq. 9, tempered student)
    uniform_teacher: target = u = 1/K instead (the virtual teacher without its shape).
    """
    k = z.shape[1]
    if uniform_teacher:
        target = uniform(_f32(z))
    else:
        target = F.softmax(virtual_teacher(y, k, correct_prob, _f32(z).dtype) / temperature, dim=1)
    student = _f32(z) / (temperature if semantics == "paper" else 1.0)
    kl = _kl(target, F.log_softmax(student, dim=1), semantics)
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * multiplier * kl


def lsr(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, epsilon: float, semantics: str,
        **_: object) -> Tensor:
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


@dataclass(frozen=True)
class Param:
    """A loss hyper-parameter: its type and the values allowed (shared by every method that reads it)."""

    kind: Any  # float, or a Literal of the allowed strings
    ok: Callable[[Any], bool]
    allowed: str  # what `ok` accepts, for the error message
    doc: str


PARAMS: dict[str, Param] = {
    "alpha": Param(float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]", "weight of the soft term; (1 - alpha) on CE"),
    "temperature": Param(float, lambda v: v > 0, "> 0", "softmax temperature T"),
    "multiplier": Param(float, lambda v: v >= 0, ">= 0", "extra factor on the KL term (official kd_self / tfkd_reg)"),
    "correct_prob": Param(float, lambda v: 0.0 < v < 1.0, "in (0, 1)", "Tf-KD_reg: probability of the true class in p^d"),
    "epsilon": Param(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)", "LSR smoothing"),
    "semantics": Param(Literal["official", "paper"], lambda v: v in SEMANTICS, " | ".join(SEMANTICS),
                       "official code or paper equations (module docstring)"),
    "label_weight": Param(float, lambda v: 0.0 < v <= 1.0, "in (0, 1]",
                          "ce: weight w on CE; the control of a row with alpha is w = 1 - alpha"),
}


def check_param(name: str, value: Any) -> None:
    """A loss parameter's value, checked: ConfigError "loss.<name> must be <allowed> (got v)",
    the line the CLI prints after the recipe's name."""
    if name not in PARAMS:
        raise ConfigError(f"unknown loss parameter {name}; allowed: {', '.join(PARAMS)}")
    p = PARAMS[name]
    if p.kind is not float:  # a Literal of strings: the recipe's own type check and line
        if value not in typing.get_args(p.kind):
            choices = " | ".join(repr(a) for a in typing.get_args(p.kind))
            raise ConfigError(f"loss.{name}: {value!r} is not allowed; choose from {choices}")
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if p.kind is float and number:
        value = float(value)  # as the recipe holds it, so the line is the CLI's
    if (p.kind is float and not number) or not p.ok(value):
        raise ConfigError(f"loss.{name} must be {p.allowed} (got {value})")
