"""tfkd's public loss API (`__all__`): the paper's five losses as pure functions (``ce``, ``kd``,
``kd_self``, ``tfkd_reg``, ``lsr``, from `tfkd_cli.functional`, where the formulas and the two
semantics, official and paper, are written down) and as ``nn.Module``s (``CE``, ``KD``,
``KDSelf``, ``TfKDReg``, ``LSR``), which check their parameters when built (a bad one raises
`tfkd_cli.errors.ConfigError`, a ValueError, with the line the CLI prints). The modules have no
defaults but those of the official code: ``semantics='official'``, Tf-KD_reg's
``correct_prob=0.99`` (hard-coded in `loss_kd_regularization`), KD's ``multiplier=1`` (`loss_kd`
has none). Each module's ``teacher_share(...)`` is the diagnostics of one batch (`tfkd_cli.grads`).

The method registry the recipe and the CLI read (`METHODS`, `build_loss`, the recipe defaults)
is `tfkd_cli.methods`, one layer above: it holds these modules.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from tfkd_cli.functional import (
    PARAMS, SEMANTICS, check_param, ce, kd, kd_self, lsr, tfkd_reg, uniform, virtual_teacher,
)
from tfkd_cli.grads import Grads, ce_grads, kd_grads, lsr_grads, norms, share, tfkd_reg_grads, wide

__all__ = ["ce", "kd", "kd_self", "tfkd_reg", "lsr", "CE", "KD", "KDSelf", "TfKDReg", "LSR",
           "virtual_teacher", "uniform", "PARAMS", "SEMANTICS", "check_param"]


class _Loss(nn.Module):
    """A loss function with its parameters bound, checked once when built.

    forward(student_logits, labels, teacher_logits=None) -> 0-d loss tensor, exactly the
    function's (and the CLI's) value. `teacher_share(...)`: the diagnostics of one batch.
    """

    method: str  # the name in tfkd_cli.methods.METHODS
    fn: Callable[..., Tensor]
    grads: Callable[..., Grads]  # its closed-form logit gradients (tfkd_cli.grads)

    def __init__(self, **params: Any):
        super().__init__()
        for name, value in params.items():
            if name != "uniform_teacher":
                check_param(name, value)
        # ints as floats, as the recipe stores them; uniform_teacher only when on (as build_loss)
        self.params = {k: float(v) if type(v) is int else v for k, v in params.items()
                       if k != "uniform_teacher" or v}

    def forward(self, student_logits: Tensor, labels: Tensor, teacher_logits: Optional[Tensor] = None) -> Tensor:
        return type(self).fn(student_logits, labels, teacher_logits, **self.params)

    def teacher_share(self, student_logits: Tensor, labels: Tensor, teacher_logits: Optional[Tensor] = None
                      ) -> Optional[float]:
        """g_teacher / (g_label + g_teacher) of this batch (`tfkd_cli.diagnostics.teacher_share`
        with these parameters); None if undefined."""
        with torch.no_grad():
            g_label, g_teacher = norms(type(self).grads(wide(student_logits), labels, teacher_logits,
                                                        **self.params)).tolist()
        return share(g_label, g_teacher)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


class CE(_Loss):
    """L = w * CE (w = label_weight, 1: plain cross-entropy). w = 1 - alpha is the control of a
    row with that alpha: its label term and nothing else."""

    method, fn, grads = "ce", staticmethod(ce), staticmethod(ce_grads)

    def __init__(self, *, label_weight: float = 1.0):
        super().__init__(**({} if label_weight == 1.0 else {"label_weight": label_weight}))


class KD(_Loss):
    """Normal KD (official `loss_kd`): L = (1 - a) CE + a T^2 m KL(s_T(t) || s_T(z)) / R.

    R = N*K with semantics='official' (`nn.KLDivLoss()`'s 'mean'), N with 'paper'. The official
    `loss_kd` has no multiplier (m = 1). uniform_teacher=True: s_T(t) -> 1/K (the control; no
    teacher logits needed). forward(z, y, teacher_logits)."""

    method, fn, grads = "kd", staticmethod(kd), staticmethod(kd_grads)

    def __init__(self, *, alpha: float, temperature: float, multiplier: float = 1.0,
                 semantics: str = "official", uniform_teacher: bool = False):
        super().__init__(alpha=alpha, temperature=temperature, multiplier=multiplier, semantics=semantics,
                         uniform_teacher=uniform_teacher)


class KDSelf(KD):
    """Tf-KD_self (official `loss_kd_self`): KD's formula with the teacher a pre-trained copy of
    the student; the official recipes always set a multiplier (e.g. ResNet18: a 0.95, T 6, m 50)."""

    method, fn, grads = "kd_self", staticmethod(kd_self), staticmethod(kd_grads)

    def __init__(self, *, alpha: float, temperature: float, multiplier: float, semantics: str = "official",
                 uniform_teacher: bool = False):
        super().__init__(alpha=alpha, temperature=temperature, multiplier=multiplier, semantics=semantics,
                         uniform_teacher=uniform_teacher)


class TfKDReg(_Loss):
    """Tf-KD_reg (official `loss_kd_regularization`), the virtual teacher p^d (correct_prob on y).

    target = softmax(p^d / T); official: L = (1 - a) CE + a m KL(target || softmax(z)) / (N K)
    (untempered student, no T^2); paper (Eq. 9): ... + a m KL(target || softmax(z / T)) / N.
    Official ResNet18 on CIFAR-100: alpha=0.1, temperature=20, multiplier=100.
    uniform_teacher=True: target -> 1/K. forward(z, y) (no teacher logits)."""

    method, fn, grads = "tfkd_reg", staticmethod(tfkd_reg), staticmethod(tfkd_reg_grads)

    def __init__(self, *, alpha: float, temperature: float, multiplier: float, correct_prob: float = 0.99,
                 semantics: str = "official", uniform_teacher: bool = False):
        super().__init__(alpha=alpha, temperature=temperature, multiplier=multiplier, correct_prob=correct_prob,
                         semantics=semantics, uniform_teacher=uniform_teacher)


class LSR(_Loss):
    """Label smoothing (official `loss_label_smoothing`): L = mean_i -sum_k target_ik log softmax(z_i)_k,
    target (1 - eps) on y and eps/(K-1) elsewhere (official) or (1 - eps) q + eps/K (paper, Eq. 1)."""

    method, fn, grads = "lsr", staticmethod(lsr), staticmethod(lsr_grads)

    def __init__(self, *, epsilon: float, semantics: str = "official"):
        super().__init__(epsilon=epsilon, semantics=semantics)
