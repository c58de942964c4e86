"""Recipe validation: typed coercion of a plain dict into the schema's dataclasses, then the
value checks a type cannot express. Every failure is one `TfkdError` naming the key and what
is allowed (the schema itself lives in recipe.py)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal

from tfkd_cli.errors import ConfigError, TfkdError
from tfkd_cli.losses import PARAMS, check_param
from tfkd_cli.methods import METHODS, check_uniform


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


# Scalar types: what a YAML value may be to fill one (ints are accepted for floats; a bool
# is never a number).
_SCALARS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    dict: lambda v: isinstance(v, dict),
}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except TfkdError:
                pass
        raise TfkdError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise TfkdError(f"{where}: {value!r} is not allowed; choose from {type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise TfkdError(f"{where}: expected {type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TfkdError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return build(tp, value, where)
    if tp in _SCALARS and _SCALARS[tp](value):
        return float(value) if tp is float else value
    raise TfkdError(f"{where}: expected {type_name(tp)}, got {value!r}")


def build(cls: type, data: dict, where: str) -> Any:
    """The dataclass `cls` from `data`, every key known and every value of its field's type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise TfkdError(f"unknown recipe key '{path}'; allowed here: {', '.join(names)}")
        kwargs[key] = coerce(value, hints[key], path)
    return cls(**kwargs)


def _get(r: Any, key: str) -> Any:
    for part in key.split("."):
        r = getattr(r, part)
    return r


# Numeric fields: (key, test of the value, what is allowed). Checked in this order.
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("width", lambda v: v > 0, "> 0"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.lr_ref_batch", lambda v: v > 0, "> 0"),
    ("optim.momentum", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("optim.gamma", lambda v: v > 0, "> 0"),
    ("optim.milestones", lambda v: v == sorted(v) and all(m > 0 for m in v), "increasing positive epochs"),
    ("train.epochs", lambda v: v > 0, "> 0"),
    ("train.batch_size", lambda v: v > 0, "> 0"),
    ("train.eval_batch_size", lambda v: v > 0, "> 0"),
    ("train.checkpoint_every", lambda v: v >= 0, ">= 0"),
    ("data.per_class", lambda v: v is None or v > 0, "> 0 or null"),
    ("data.val_per_class", lambda v: v >= 0, ">= 0"),
    ("teacher.epoch", lambda v: v is None or v > 0, ">= 1"),
    ("teacher.ratio", lambda v: v is None or 0 < v <= 1, "in (0, 1] (a fraction of the teacher's final test top-1) or null"),
    ("data.image_size", lambda v: v is None or v > 0, "> 0 or null"),
    ("data.mean", lambda v: v is None or len(v) == 3, "3 per-channel values or null"),
    ("data.std", lambda v: v is None or (len(v) == 3 and min(v) > 0), "3 positive per-channel values or null"),
    ("data.memory_mb", lambda v: v >= 0, ">= 0"),
)


def check_values(r: Any, src: str) -> None:
    """Value checks a type cannot express on a built Recipe; each names the key and what is allowed."""

    def bad(key: str, what: str) -> None:
        raise ConfigError(f"{src}: {key} must be {what}")

    from tfkd_cli.models import canonical_name

    for key in ("model", "teacher.model"):
        name = _get(r, key)
        if name is None:
            continue
        try:
            canonical_name(name)
        except TfkdError as e:
            raise TfkdError(f"{src}: {key}: {e}") from None
    if r.method not in METHODS:
        bad("method", f"one of {', '.join(METHODS)} (got {r.method!r})")
    for key, ok, allowed in _RANGES:
        if not ok(_get(r, key)):
            bad(key, f"{allowed} (got {_get(r, key)})")
    for name in PARAMS:  # the check (and line) the tfkd_cli.losses modules raise too
        value = getattr(r.loss, name)
        if value is not None:
            try:
                check_param(name, value)
            except ConfigError as e:
                raise ConfigError(f"{src}: {e}") from None
    if any(not 1 <= e <= r.train.epochs for e in r.train.keep_epochs):
        bad("train.keep_epochs", f"epochs in 1..{r.train.epochs} (got {r.train.keep_epochs})")
    if (r.data.mean is None) != (r.data.std is None):
        bad("data.mean", f"given with data.std (both, or neither: the training images' own; got mean {r.data.mean}, std {r.data.std})")
    _check_teacher(r, src, bad)
    if r.runtime.wandb is not None and not r.runtime.wandb.strip():
        bad("runtime.wandb", "a W&B project name, or null for no W&B (got an empty name)")


def _check_teacher(r: Any, src: str, bad: Callable[[str, str], None]) -> None:
    """The method, its teacher and the controls agree."""
    try:
        check_uniform(r.method, r.teacher.uniform)
    except TfkdError as e:
        raise TfkdError(f"{src}: teacher.uniform: {e}") from None
    if r.teacher.ratio is not None and r.teacher.epoch is not None:
        bad("teacher.epoch", f"null with teacher.ratio (the ratio picks the epoch; got epoch {r.teacher.epoch}, "
            f"ratio {r.teacher.ratio})")
    if r.teacher.ratio is not None and r.teacher.uniform:
        bad("teacher.ratio", "null with teacher.uniform (the uniform teacher has no epochs)")
    if r.teacher.uniform and r.teacher.path:
        bad("teacher.path", f"empty with teacher.uniform (the uniform teacher loads no network; got {r.teacher.path!r})")
    if r.loss.label_weight is not None and "label_weight" not in METHODS[r.method].optional:
        bad("loss.label_weight", f"unset for method {r.method}, which does not read it (only ce does)")
    if METHODS[r.method].needs_teacher and not r.teacher.path and not r.teacher.uniform:
        bad("teacher.path", f"set for method {r.method} (a run directory or a checkpoint; --teacher; or teacher.uniform)")


def _has(data: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return data is not None


def check_layer(cls: type, data: dict, src: str) -> None:
    """One layer of a recipe (a file, the --set overrides, the flags) on its own: its keys, their
    types and the ranges of the values it sets, so that a bad value is refused even when a
    later layer overrides it."""
    try:
        r = build(cls, data, "")
    except TfkdError as e:
        raise ConfigError(f"{src}: {e}") from None
    for key, ok, allowed in _RANGES:
        if _has(data, key) and not ok(_get(r, key)):
            raise ConfigError(f"{src}: {key} must be {allowed} (got {_get(r, key)})")
    for name in PARAMS:
        if _has(data, f"loss.{name}"):
            try:
                check_param(name, getattr(r.loss, name))
            except ConfigError as e:
                raise ConfigError(f"{src}: {e}") from None
