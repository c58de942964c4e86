"""A run's identity: what a run is a function of, and every name derived from it.

One canonical identity per run, `canonical(recipe)`: the resolved recipe without what does not
change its numbers (runtime settings, where the data lies, the run's label, loss parameters its
method does not read). Everything that names a run derives from it, here and nowhere else:

- `recipe_hash` (16 hex), stored in checkpoints and summaries: a resume must continue the same
  numbers. It leaves out which files a run keeps (`keep_epochs`, `checkpoint_every`).
- `run_key` (10 hex) and `run_name` (`<model>_<method>_s<seed>_<key>`): a run directory of a
  table or sweep, and its committed record (`tables/records.py`). The key keeps the kept
  files (a run directory must hold the files asked of it) and names a teacher run by the
  teacher's own key, not by its path, so the name is the same on every machine.
- `digest`: the one hash function, also keying the teacher-logit cache (`teacher_cache.py`).

A teacher picked by strength (`teacher.ratio`, `tfkd_cli.storage.strength`) is named by its ratio, not
by the epoch it resolves to: that epoch is a function of the teacher run, which the key names.

Version 1 (before commit 35f0c10) held every loss parameter, read or not. A run written then is
still found: `legacy_hash` / `legacy_key` give its old names (the only v1 code; `plan` uses it).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any, Optional

VERSION = 2
# The loss parameters identity 1 held; a run that sets any other away from its default cannot
# be a version-1 run.
# With the values a run that left them unset held then (later per-method defaults leave a
# parameter that the run's method does not read at None).
_V1_LOSS = {"alpha": 0.9, "temperature": 20.0, "multiplier": 1.0, "correct_prob": 0.99, "epsilon": 0.1,
            "semantics": "official"}
# Fields added after runs existed: left out at their defaults, so those runs keep their names.
_DATA_DEFAULTS = {"image_size": None, "mean": None, "std": None, "memory_mb": 2048}
_FILES = ("checkpoint_every", "keep_epochs")  # which files a run writes, not its numbers


def digest(obj: Any, n: int) -> str:
    """The first `n` hex digits of the sha256 of `obj` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _base(recipe) -> dict:
    """The recipe as a dict, less what never defines a run (version 1's identity, less its loss)."""
    d = dataclasses.asdict(recipe)
    d.pop("runtime")
    d.pop("name")
    d["teacher"].pop("other_dataset", None)
    for k in ("root", "download", "workers"):
        d["data"].pop(k)
    if not d["data"]["val_per_class"]:  # no split: as runs made before the field
        d["data"].pop("val_per_class")
    for k, default in _DATA_DEFAULTS.items():
        if d["data"].get(k, default) == default:
            d["data"].pop(k, None)
    if not d["teacher"].get("uniform"):  # a control, added later: absent when false
        d["teacher"].pop("uniform", None)
    if d["teacher"].get("ratio") is None:  # a teacher by strength, added later: absent when unset
        d["teacher"].pop("ratio", None)
    return d


def canonical(recipe) -> dict:
    """The run's identity: `_base` with only the loss parameters its method reads."""
    d = _base(recipe)
    d["loss"] = recipe.loss_params()
    d["identity"] = VERSION
    return d


def legacy(recipe) -> Optional[dict]:
    """The identity version 1 gave this run, or None when no version-1 run could be it."""
    loss, defaults = dataclasses.asdict(recipe.loss), dataclasses.asdict(type(recipe.loss)())
    if recipe.teacher.uniform or recipe.teacher.ratio is not None or any(v != defaults[k] for k, v in loss.items() if k not in _V1_LOSS):
        return None
    d = _base(recipe)
    d["loss"] = {k: v if loss[k] is None else loss[k] for k, v in _V1_LOSS.items()}
    return d


def _numbers(identity: dict) -> dict:
    d = copy.deepcopy(identity)
    for k in _FILES:
        d["train"].pop(k)
    return d


def recipe_hash(recipe) -> str:
    return digest(_numbers(canonical(recipe)), 16)


def legacy_hash(recipe) -> Optional[str]:
    d = legacy(recipe)
    return None if d is None else digest(_numbers(d), 16)


def _key(identity: dict, teacher_key: Optional[str]) -> str:
    d = copy.deepcopy(identity)
    if teacher_key is not None:
        d["teacher"]["path"] = teacher_key
    return digest(d, 10)


def run_key(recipe, teacher_key: Optional[str] = None) -> str:
    """The run's directory key; `teacher_key`: its teacher run's key (or `release:<path>`)."""
    return _key(canonical(recipe), teacher_key)


def legacy_key(recipe, teacher_key: Optional[str] = None) -> Optional[str]:
    d = legacy(recipe)
    return None if d is None else _key(d, teacher_key)


def run_name(recipe, key: str) -> str:
    """A run directory's (and its record's) name."""
    return f"{recipe.model.replace(':', '-')}_{recipe.method}_s{recipe.seed}_{key}"
