"""Loss-term diagnostics per method, for the training loop and the public API: the label and
teacher terms' gradient norms of one batch (`term_norms`), the teacher term's share
(`teacher_share`) and their epoch means (`EpochDiagnostics`, the metrics.csv columns).

The closed forms, and what g_label and g_teacher measure, are in `grads`; each method's record
in `methods.METHODS` holds its own (`grads`), beside its loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from tfkd_cli.errors import TfkdError
from tfkd_cli.grads import Grads, norms, share, wide
from tfkd_cli.methods import METHODS, get_method, method_params

__all__ = ["term_grads", "term_norms", "teacher_share", "share", "COLUMNS", "EpochDiagnostics"]


def term_grads(method: str, z: Tensor, y: Tensor, t: Optional[Tensor] = None, **params: object) -> Grads:
    """The two gradient matrices dL_label/dz and dL_teacher/dz (None for ce) of one batch.

    The closed form is the method's record in `tfkd_cli.methods.METHODS` (its `grads`, beside its
    loss); unset parameters take the record's defaults, exactly as `build_loss` does."""
    try:
        m = get_method(method)
    except TfkdError:
        raise TfkdError(f"no diagnostics for method {method!r}; choose from: {', '.join(METHODS)}") from None
    extra = {"uniform_teacher": True} if params.get("uniform_teacher") else {}
    return m.grads(wide(z), y, t, **method_params(method, params), **extra)


def term_norms(method: str, z: Tensor, y: Tensor, t: Optional[Tensor] = None, **params: object) -> Tensor:
    """tensor([g_label, g_teacher]) of one batch, on the logits' device (no host sync).

    `params` are the method's loss params (alpha, temperature, multiplier, correct_prob,
    epsilon, semantics), plus `uniform_teacher` (kd, kd_self, tfkd_reg) and `label_weight`
    (ce); others are ignored, as `build_loss` does."""
    with torch.no_grad():
        return norms(term_grads(method, z, y, t, **params))


def teacher_share(method: str, z: Tensor, y: Tensor, t: Optional[Tensor] = None, **params: object) -> Optional[float]:
    """teacher_share of one batch: g_teacher / (g_label + g_teacher) of method `method` with
    `params` (those of `build_loss` / the `tfkd_cli.losses` modules); None when undefined.
    0.0 for ce (no teacher term). This syncs with the device: for per-step logging, sum
    `term_norms` instead (as `EpochDiagnostics` does)."""
    g_label, g_teacher = term_norms(method, z, y, t, **params).tolist()
    return share(g_label, g_teacher)


COLUMNS = ("grad_label", "grad_teacher", "teacher_share")  # metrics.csv, summary.json "diagnostics"


@dataclass
class EpochDiagnostics:
    """Mean over an epoch's batches of g_label and g_teacher. `add` keeps a device-side sum
    (no sync per step); `row()` gives the metrics.csv columns grad_label, grad_teacher and
    teacher_share (the share of the two epoch means)."""

    sums: Optional[Tensor] = None
    batches: int = 0

    def add(self, norms: Tensor) -> None:
        self.sums = norms.double() if self.sums is None else self.sums + norms.double()
        self.batches += 1

    def row(self) -> dict[str, Optional[float]]:
        if not self.batches:
            return dict.fromkeys(COLUMNS)
        gl, gt = (self.sums / self.batches).tolist()
        return {"grad_label": gl, "grad_teacher": gt, "teacher_share": share(gl, gt)}
