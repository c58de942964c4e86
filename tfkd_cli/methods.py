"""The method registry: one `Method` record per training method, the only place a method is added.

A record holds the method's loss (`tfkd_cli.functional`), its closed-form gradients
(`tfkd_cli.grads`, read by `tfkd_cli.diagnostics`), its `nn.Module` face (`tfkd_cli.losses`),
whether it needs a teacher, and the loss parameters it reads with the recipe's defaults. The recipe schema (LossCfg), the run identity,
the CLI help, the cost model and the diagnostics all read `METHODS`.

`build_loss(name, **params)` is the recipe's loss builder: unset parameters take the record's
`defaults`, each an official setting: kd and kd_self alpha 0.9, T 20 (kd_experiments/
cnn_distill), tfkd_reg alpha 0.1, T 20, multiplier 100 (base_experiments/base_resnet18), lsr
epsilon 0.1. A run's identity holds the resolved values, so changing a default never renames a
finished run. Library code may also use the `tfkd_cli.losses` modules, which take no defaults.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from tfkd_cli import grads as dg
from tfkd_cli import losses as L
from tfkd_cli.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """One training method: its loss, its gradient diagnostics, whether it needs a teacher, and
    the parameters it reads.

    `defaults` is the only place a method's parameter defaults live; the recipe (LossCfg),
    the run identity, the CLI and the cost model all read this record.
    """

    loss: Callable[..., Tensor]
    grads: Callable[..., dg.Grads]  # (dL_label/dz, dL_teacher/dz or None) in closed form
    module: type[nn.Module]  # the loss as an nn.Module (tfkd_cli.losses)
    needs_teacher: bool
    defaults: dict[str, Any]  # parameter -> default; the loss reads exactly these
    doc: str
    uniform_ok: bool = False  # has a teacher distribution that the uniform-teacher control replaces
    # Parameters read only when set: their default reproduces the method without them, so a
    # run leaves them out (identity, hash) unless it sets another value (ce's label_weight).
    optional: dict[str, Any] = dataclasses.field(default_factory=dict)


_KD = {"alpha": 0.9, "temperature": 20.0, "multiplier": 1.0, "semantics": "official"}
METHODS: dict[str, Method] = {
    "ce": Method(L.ce, dg.ce_grads, L.CE, False, {}, "cross-entropy (a baseline or a teacher); x label_weight",
                 optional={"label_weight": 1.0}),
    "kd": Method(L.kd, dg.kd_grads, L.KD, True, dict(_KD),
                 "knowledge distillation from a teacher (normal KD, Re-KD, De-KD)", True),
    "kd_self": Method(L.kd_self, dg.kd_grads, L.KDSelf, True, dict(_KD),
                      "Tf-KD_self: KD from a pre-trained copy of the model", True),
    # the official ResNet18 setting (base_experiments/base_resnet18: reg_alpha 0.1, reg_temperature
    # 20, multiplier 100), so a run that sets nothing is the paper's Tf-KD_reg ResNet18
    "tfkd_reg": Method(L.tfkd_reg, dg.tfkd_reg_grads, L.TfKDReg, False,
                       {"alpha": 0.1, "temperature": 20.0, "multiplier": 100.0, "semantics": "official",
                        "correct_prob": 0.99},
                       "Tf-KD_reg: KD from a virtual teacher", True),
    "lsr": Method(L.lsr, dg.lsr_grads, L.LSR, False, {"epsilon": 0.1, "semantics": "official"},
                  "label smoothing regularization"),
}
LOSSES: dict[str, Callable[..., Tensor]] = {name: m.loss for name, m in METHODS.items()}
NEEDS_TEACHER = {name for name, m in METHODS.items() if m.needs_teacher}  # derived, for the engine


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]


def method_params(name: str, given: dict) -> dict:
    """The parameters method `name` reads: its defaults, overridden by the non-None values in
    `given`, and its optional parameters that `given` sets away from their default."""
    m = get_method(name)
    out = {k: given[k] if given.get(k) is not None else d for k, d in m.defaults.items()}
    return {**out, **{k: given[k] for k, d in m.optional.items() if given.get(k) not in (None, d)}}


def uniform_methods() -> list[str]:
    return [n for n, m in METHODS.items() if m.uniform_ok]


def check_uniform(name: str, uniform_teacher: bool) -> None:
    """The uniform-teacher control exists only for methods with a teacher distribution."""
    if uniform_teacher and not get_method(name).uniform_ok:
        raise ConfigError(f"a uniform teacher (--teacher uniform, teacher.uniform) is a control of "
                          f"{', '.join(uniform_methods())}; method {name} has no teacher to replace")


def build_loss(name: str, uniform_teacher: bool = False, **params: object) -> Callable[..., Tensor]:
    """`loss(student_logits, labels, teacher_logits=None)` for a method name and its params.

    Parameters the method does not read (and None values) are ignored; unset ones take the
    method's recipe default (module docstring). `uniform_teacher`: the uniform-teacher control.
    """
    m = get_method(name)
    check_uniform(name, uniform_teacher)
    unknown = set(params) - set(L.PARAMS)
    if unknown:
        raise ConfigError(f"unknown loss parameter(s) {', '.join(sorted(unknown))}; allowed: {', '.join(L.PARAMS)}")
    if params.get("semantics") not in (None, *L.SEMANTICS):
        raise ConfigError(f"semantics must be one of {', '.join(L.SEMANTICS)}, got {params['semantics']!r}")
    extra = {"uniform_teacher": True} if uniform_teacher else {}
    fn = functools.partial(m.loss, **method_params(name, params), **extra)
    functools.update_wrapper(fn, m.loss)
    return fn


__all__ = ["Method", "METHODS", "LOSSES", "NEEDS_TEACHER", "get_method", "method_params", "uniform_methods",
           "check_uniform", "build_loss"]
