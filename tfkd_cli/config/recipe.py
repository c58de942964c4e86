"""Run recipes: typed dataclasses loaded from YAML, validated at load time.

A recipe file is YAML read with `yaml.safe_load` (no Python tags, nothing imported or
called). `base:` names one file (or a list) to inherit from, relative to the file; later
values win, nested mappings merge. Then `--set a.b=c` overrides apply, then CLI shortcut
flags. The result is checked field by field against `Recipe`: an unknown key, a wrong type
or a value out of range is a `TfkdError` naming the source and the key.

Why typed dataclasses: a run is a function of its resolved recipe and seed, so the
resolved recipe (saved as `recipe.yaml` in every run directory) must be complete and exact.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from tfkd_cli.config import identity
from tfkd_cli.errors import ConfigError, TfkdError
from tfkd_cli.losses import PARAMS
from tfkd_cli.methods import METHODS, method_params
from tfkd_cli.config.checks import build, check_layer, check_values



@dataclass
class TeacherCfg:
    """Where the teacher comes from (methods kd and kd_self)."""

    path: Optional[str] = None  # a tfkd run directory or a checkpoint file (tfkd or official .pth.tar)
    model: Optional[str] = None  # architecture; needed for official checkpoints, else read from the run
    epoch: Optional[int] = None  # a kept epoch checkpoint of the teacher run (De-KD), else its best
    # De-KD at reduced scales: the epoch of the finished teacher run whose test top-1 / final test
    # top-1 is nearest this ratio (tfkd_cli.storage.strength); exclusive with `epoch`
    ratio: Optional[float] = None
    width: Optional[float] = None  # width of an official checkpoint's model (default 1.0)
    uniform: bool = False  # control: the uniform distribution instead of a teacher (kd, kd_self, tfkd_reg)
    # accept a teacher whose recorded dataset is not this run's (--teacher-other-dataset); a
    # permission, not part of the run's identity
    other_dataset: bool = False


def _loss_cfg() -> type:
    """LossCfg, generated from the method registry (`tfkd_cli.losses.PARAMS`, `METHODS`).

    One field per loss parameter, typed by the registry. Its default is the one every method
    that reads it agrees on (None where they differ: `from_dict` then fills the run's method's
    default). So a new parameter is declared once, in losses.py.
    """
    fields = []
    for name, p in PARAMS.items():
        defaults = {m.defaults[name] for m in METHODS.values() if name in m.defaults}
        default = defaults.pop() if len(defaults) == 1 else None
        fields.append((name, p.kind if default is not None else Optional[p.kind], field(default=default)))
    cls = dataclasses.make_dataclass("LossCfg", fields)
    cls.__doc__ = "Loss parameters; see `tfkd_cli.losses` for the formulas and which method reads which."
    cls.__module__ = __name__
    return cls


LossCfg = _loss_cfg()


@dataclass
class DataCfg:
    dataset: str = "cifar100"
    root: Optional[str] = None  # default: env TFKD_DATA_ROOT, else ./data
    download: bool = False
    per_class: Optional[int] = None  # class-balanced training subset (reduced scales)
    subset_seed: int = 0  # seeds the subset and the validation split (never the run seed)
    val_per_class: int = 0  # images per class held out of training for model selection (0: none, official)
    augment: bool = True
    workers: int = 4  # DataLoader workers of streamed folder datasets, at most the cores this process may use
    # dataset folder (tfkd_cli.data.imagefolder): resize on read to N x N (null: the images' one size)
    image_size: Optional[int] = None
    mean: Optional[list[float]] = None  # per-channel normalisation (null: the training images', computed once)
    std: Optional[list[float]] = None
    memory_mb: int = 2048  # a folder set is held in memory when its pixels fit in this many MiB, else streamed


@dataclass
class OptimCfg:
    lr: float = 0.1  # at batch size lr_ref_batch; scaled linearly with the batch size
    lr_ref_batch: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: int = 1  # per-iteration linear warm-up over these epochs (official: 1)
    milestones: list[int] = field(default_factory=lambda: [60, 120, 160])
    gamma: float = 0.2


@dataclass
class TrainCfg:
    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 512
    keep_epochs: list[int] = field(default_factory=list)  # epoch checkpoints to keep (De-KD teachers)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: epoch ends only)
    report: Literal["best", "last"] = "best"  # which epoch a results table reports (official: best)


@dataclass
class RuntimeCfg:
    """How to run; none of this enters the recipe hash."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the student
    channels_last: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms; cudnn.benchmark off
    threads: int = 0  # torch CPU threads (0: torch default)
    teacher_cache: bool = True  # share a frozen teacher's logits between students (tfkd_cli.storage.teacher_cache)
    tensorboard: bool = False  # event files in <run>/tensorboard (tfkd_cli.training.tracking)
    wandb: Optional[str] = None  # a W&B project to log to (tfkd_cli.training.tracking)
    fast_eval: bool = True  # evaluate a conv-BN folded channels_last copy (tfkd_cli.fold); false: the model itself


@dataclass
class Recipe:
    model: str = "resnet18"
    width: float = 1.0
    method: str = "ce"
    seed: int = 0
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    runtime: RuntimeCfg = field(default_factory=RuntimeCfg)
    name: Optional[str] = None  # free label, e.g. the table row

    # -- derived values -------------------------------------------------------------
    @property
    def lr(self) -> float:
        """Official LR scaling: lr = base_lr * batch / 128."""
        return self.optim.lr * self.train.batch_size / self.optim.lr_ref_batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def loss_params(self) -> dict:
        """The loss parameters this run's method reads, with their values (build_loss takes these)."""
        return method_params(self.method, dataclasses.asdict(self.loss))

    # The run's identity and hashes live in tfkd_cli/config/identity.py; these are its short forms.
    def identity(self) -> dict:
        """The recipe without what does not define the run (identity.canonical)."""
        return identity.canonical(self)

    def identity_v1(self) -> dict:
        """The identity as tfkd wrote it before identity version 2 (every loss parameter)."""
        return identity.legacy(self) or {}

    def hash(self) -> str:
        """Hash of everything that changes the numbers (the identity without kept files)."""
        return identity.recipe_hash(self)

    def legacy_hash(self) -> Optional[str]:
        """The hash identity version 1 gave this run, or None if no version-1 run could be it."""
        return identity.legacy_hash(self)

    def matches_hash(self, h: Optional[str]) -> bool:
        """Whether a hash recorded in a run (summary, checkpoint) is this recipe's, now or before."""
        return h is not None and h in (self.hash(), self.legacy_hash())


# -- loading -------------------------------------------------------------------------


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping safely; python tags and malformed files are one-line errors."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise TfkdError(f"recipe file not found: {path}") from None
    except OSError as e:
        raise TfkdError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise TfkdError(f"{path}: refused YAML tag {e.problem.split()[-1] if e.problem else ''} "
                        "(recipes are plain data; no Python objects)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TfkdError(f"{path}: malformed YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TfkdError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict) -> dict:
    """Deep merge: nested mappings merge, everything else in `over` replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_layers(path: Path, _seen: tuple = ()) -> dict:
    """A recipe file with its `base:` chain resolved (a plain dict, not yet validated)."""
    path = Path(path).resolve()
    if path in _seen:
        raise TfkdError(f"{path}: circular 'base:' chain")
    data = read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise TfkdError(f"{path}: base must be a file path or a list of them")
    merged: dict = {}
    for b in bases:
        merged = merge(merged, load_layers(path.parent / b, _seen + (path,)))
    return merge(merged, data)


def parse_set(items: typing.Iterable[str]) -> dict:
    """`a.b=c` strings to a nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise TfkdError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.05")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise TfkdError(f"--set {item!r}: cannot parse the value {raw!r}") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; a user means the number
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TfkdError(f"--set {item!r}: {p} is set twice")
        node[parts[-1]] = value
    return out


def from_dict(data: dict, source: str = "recipe") -> Recipe:
    """Validate a plain dict into a `Recipe`; errors name `source` and the key."""
    try:
        r = build(Recipe, data, "")
    except TfkdError as e:
        raise ConfigError(f"{source}: {e}") from None
    check_values(r, source)
    for k, v in r.loss_params().items():  # a parameter the methods' defaults disagree on
        setattr(r.loss, k, v)
    return r


def resolve(file: Optional[str | Path] = None, sets: typing.Iterable[str] = (),
            overrides: Optional[dict] = None, defaults: Optional[dict] = None) -> Recipe:
    """The one way to build a recipe: defaults < file (with bases) < --set < flags."""
    data = copy.deepcopy(defaults or {})
    source = "recipe"
    if file:
        data = merge(data, load_layers(Path(file)))
        source = str(file)
    data = merge(data, parse_set(sets))
    data = merge(data, overrides or {})
    return from_dict(data, source)


def recipes_dir() -> Path:
    """The recipes folder: $TFKD_RECIPES, else the installed package's data folder
    `tfkd_cli/recipes` (the wheel maps the repository's top-level recipes/ there, see
    pyproject.toml), else, in a source checkout, the top-level recipes/ beside the package."""
    env = os.environ.get("TFKD_RECIPES")
    if env:
        return Path(env)
    packaged = Path(str(resources.files("tfkd_cli") / "recipes"))  # a wheel installs plain files
    if packaged.is_dir():
        return packaged
    return Path(str(resources.files("tfkd_cli"))).parent / "recipes"


def pick(layers: list[dict], *keys: str) -> Any:
    """The value of a nested key in the highest layer that sets it."""
    for layer in reversed(layers):
        node: Any = layer
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def dataset_profile(dataset: str) -> dict:
    """recipes/datasets/<dataset>.yaml, a dataset's own protocol (e.g. ImageNet's 90 epochs), or {}."""
    path = recipes_dir() / "datasets" / f"{dataset}.yaml"
    return load_layers(path) if path.is_file() else {}


def resolve_layers(layers: list[dict], *, dataset: str, scale: Optional[Callable[[dict], dict]] = None,
                   sets: typing.Iterable[dict] = ()) -> dict:
    """The one layering order of a run's recipe, lowest first: Recipe defaults < the profile of
    `dataset` (recipes/datasets/) < `layers` (a recipe file; a table's run_defaults and run) <
    `scale` (a `reproduce` scale, which rewrites the whole dict) < `sets` (--set, then flags).

    Single runs (`resolve_run`) and table runs (`tfkd_cli.tables.plan`) both resolve here;
    each names the dataset whose profile applies. Returns a plain dict, not yet validated.
    """
    full = merge(Recipe().to_dict(), dataset_profile(dataset))
    for layer in layers:
        full = merge(full, layer)
    if scale is not None:
        full = scale(full)
    for layer in sets:
        full = merge(full, layer)
    return full


def resolve_run(file: Optional[str | Path] = None, sets: typing.Iterable[str] = (),
                overrides: Optional[dict] = None, base: Optional[dict] = None) -> Recipe:
    """A run's recipe: defaults < dataset profile < `base` < file < --set < flags
    (`resolve_layers`). The profile is that of the dataset the layers name, --set and flags
    included.
    """
    layers = [copy.deepcopy(base or {})]
    if file:
        layers.append(load_layers(Path(file)))
    given = [parse_set(sets), overrides or {}]
    for layer, src in zip(layers[1:] + given, [str(file)] * bool(file) + ["--set", "flags"]):
        check_layer(Recipe, layer, src)  # every layer, not only what survives the merge
    dataset = pick(layers + given, "data", "dataset") or DataCfg.dataset
    data = resolve_layers(layers, dataset=dataset, sets=given)
    return from_dict(data, str(file) if file else "recipe")


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
