"""tfkd: reference toolchain for Teacher-free Knowledge Distillation (Yuan et al., CVPR 2020).

The public Python API (`__all__`; README "Use Tf-KD in your own training loop"):

    from tfkd_cli import losses             # ce, kd, kd_self, tfkd_reg, lsr and CE, KD, KDSelf, TfKDReg, LSR
    from tfkd_cli import build_model, eval_model, teacher_share, ConfigError

- `losses`: the five methods' losses as pure functions and as nn.Modules, with the controls
  (`uniform_teacher=True`, `CE(label_weight=w)`); formulas and official-vs-paper semantics in
  their docstrings.
- `teacher_share(method, logits, labels, teacher_logits=None, **params)`: the share of the
  teacher term in the logit gradient of one batch (`tfkd_cli.diagnostics`); also
  `losses.TfKDReg(...).teacher_share(...)`.
- `build_model(name, num_classes, width=1.0)`: the official CIFAR models and any torchvision
  model as "tv:<name>"; `model_names()` lists them.
- `eval_model(model, fold=True, channels_last=True)`: the conv-BN folded evaluation copy
  (`tfkd_cli.fold`; the training weights are never touched).
- `ConfigError`: a bad parameter (a ValueError), with the line the CLI prints.

Names load on first use, so `tfkd --help` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); None: the module itself
_PUBLIC = {
    "losses": ("tfkd_cli.losses", None),
    "diagnostics": ("tfkd_cli.diagnostics", None),
    "teacher_share": ("tfkd_cli.diagnostics", "teacher_share"),
    "build_model": ("tfkd_cli.models", "build_model"),
    "model_names": ("tfkd_cli.models", "model_names"),
    "eval_model": ("tfkd_cli.fold", "eval_model"),
    "ConfigError": ("tfkd_cli.errors", "ConfigError"),
    "TfkdError": ("tfkd_cli.errors", "TfkdError"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tfkd_cli' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)
