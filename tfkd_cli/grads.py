"""Each loss's two terms as closed-form logit gradients: how hard each pulls on the student
logits. `methods` pairs each method's loss with its gradients; `diagnostics` applies them.

Every method's loss splits into a label term and a teacher (or virtual-teacher) term,
L = L_label + L_teacher, each a batch mean L = (1/N) sum_i l_i. For a term with batch-loss
gradient G = dL/dz (N x K, closed form below), the reported norm is

    g = sum_i ||G_i||_2 = (1/N) sum_i ||d l_i / d z_i||_2

i.e. the MEAN OVER SAMPLES of the L2 norm of each sample's own gradient (not the Frobenius
norm of G, which shrinks as 1/sqrt(N)): it does not depend on the batch size, and it carries
every weight the loss applies (alpha, T^2, multiplier, and the official 1/K of
`nn.KLDivLoss()`'s 'mean' reduction). teacher_share = g_teacher / (g_label + g_teacher); 0 for CE.

Closed forms (p = softmax(z), s_T(x) = softmax(x/T), q = one-hot(y), a = alpha, m = multiplier,
R = K (official, KLDivLoss 'mean' divides by N*K) or 1 (paper, batch mean), w = label weight):

    d CE / dz_i                         = (p_i - q_i) / N
    d KL(s_T(t) || s_T(z))_i / dz_i     = (s_T(z)_i - s_T(t)_i) / T

    ce        label = w (p - q) / N                      teacher = 0
    kd        label = (1-a)(p - q) / N                   teacher = a T m (s_T(z) - s_T(t)) / (N R)
    kd_self   same as kd (its multiplier m)
    tfkd_reg  label = (1-a)(p - q) / N                   target = softmax(p^d / T)
              official: teacher = a m (p - target) / (N K)              (untempered student)
              paper:    teacher = a m (s_T(z) - target) / (N T)         (tempered student)
    lsr       L = (1-eps) CE + eps H(u, p), u the smoothing distribution:
              label = (1-eps)(p - q) / N                 teacher = eps (p - u) / N
              official: u = 1/(K-1) off the label, 0 on it;  paper: u = 1/K

The uniform-teacher control replaces s_T(t) (kd, kd_self) or the target (tfkd_reg) by 1/K
(equivalently: all-zero teacher logits for kd). Everything is computed from logits only, in
float32 or wider, with no autograd: call it under `torch.no_grad()` on each training batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tfkd_cli.errors import TfkdError
from tfkd_cli.functional import uniform, virtual_teacher

Grads = tuple[Tensor, Optional[Tensor]]  # (label term, teacher term or None) batch-loss gradients


def share(g_label: float, g_teacher: float) -> Optional[float]:
    """teacher_share = g_teacher / (g_label + g_teacher); None when both are 0 (undefined)."""
    total = g_label + g_teacher
    return None if total == 0 else g_teacher / total


def wide(x: Tensor) -> Tensor:
    """At least float32 (AMP logits are bf16), detached: diagnostics never join the graph."""
    x = x.detach()
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _ce_grad(p: Tensor, y: Tensor) -> Tensor:
    """(p - q) / N, the gradient of the batch-mean CE w.r.t. the logits, given p = softmax(z)."""
    g = p.clone()
    g[torch.arange(len(y), device=y.device), y] -= 1.0
    return g / len(y)


def _kl_scale(n: int, k: int, semantics: str) -> float:
    """1 / (N*K) (official KLDivLoss 'mean') or 1 / N (paper batch mean)."""
    return 1.0 / (n * k if semantics == "official" else n)


def ce_grads(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, label_weight: float = 1.0,
             **_: object) -> Grads:
    """ce: label = w (p - q) / N, no teacher term."""
    return label_weight * _ce_grad(F.softmax(z, dim=1), y), None


def kd_grads(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, alpha: float, temperature: float,
             multiplier: float, semantics: str, uniform_teacher: bool = False, **_: object) -> Grads:
    """kd / kd_self: label = (1-a)(p - q)/N, teacher = a T m (s_T(z) - s_T(t)) / (N R)."""
    T = temperature
    if uniform_teacher:
        soft = uniform(z)
    elif t is None:
        raise TfkdError("kd diagnostics need teacher logits (or uniform_teacher=True)")
    else:
        soft = F.softmax(wide(t).to(z.dtype) / T, dim=1)
    n, k = z.shape
    teacher = (alpha * T * multiplier * _kl_scale(n, k, semantics)) * (F.softmax(z / T, dim=1) - soft)
    return (1.0 - alpha) * _ce_grad(F.softmax(z, dim=1), y), teacher


def tfkd_reg_grads(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, alpha: float, temperature: float,
                   multiplier: float, correct_prob: float, semantics: str, uniform_teacher: bool = False,
                   **_: object) -> Grads:
    """tfkd_reg: teacher = a m (s_1(z) - target)/(N K) official, a m (s_T(z) - target)/(N T) paper."""
    n, k = z.shape
    T = temperature
    if uniform_teacher:
        target = uniform(z)
    else:
        target = F.softmax(virtual_teacher(y, k, correct_prob, z.dtype) / T, dim=1)
    if semantics == "official":
        student, scale = F.softmax(z, dim=1), 1.0 / (n * k)
    else:
        student, scale = F.softmax(z / T, dim=1), 1.0 / (n * T)
    return (1.0 - alpha) * _ce_grad(F.softmax(z, dim=1), y), (alpha * multiplier * scale) * (student - target)


def lsr_grads(z: Tensor, y: Tensor, t: Optional[Tensor] = None, *, epsilon: float, semantics: str,
              **_: object) -> Grads:
    """lsr: label = (1-eps)(p - q)/N, teacher = eps (p - u)/N with u the smoothing distribution."""
    n, k = z.shape
    p = F.softmax(z, dim=1)
    if semantics == "official":  # eps/(K-1) on every wrong class: u puts nothing on the label
        u = torch.full_like(z, 1.0 / (k - 1))
        u[torch.arange(n, device=y.device), y] = 0.0
    else:
        u = uniform(z)
    return (1.0 - epsilon) * _ce_grad(p, y), (epsilon / n) * (p - u)


def norm(g: Optional[Tensor], like: Tensor) -> Tensor:
    """sum_i ||G_i||_2 = the per-sample mean of each sample's gradient norm (0-d tensor)."""
    return like.new_zeros(()) if g is None else torch.linalg.vector_norm(g, dim=1).sum()


def norms(grads: Grads) -> Tensor:
    """tensor([g_label, g_teacher]) of one batch's two gradient matrices (no host sync)."""
    label, teacher = grads
    return torch.stack([norm(label, label), norm(teacher, label)])
