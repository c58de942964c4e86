"""`tfkd sweep`: a grid over recipe fields, run through the reproduce machinery, chosen on val.

    tfkd sweep --dataset digits --method tfkd_reg --val-per-class 20 \
        --grid loss.alpha=0.1,0.9 --grid loss.temperature=4,20

Every (point, seed) is a planned run with a content-addressed directory (the same naming as
`tfkd reproduce`, so a sweep and a table share identical runs), run by `run_plan`: finished
points are skipped, interrupted ones resumed, `--jobs N` runs N at once. The chosen point is the
one with the best mean validation top-1 (`report.choose`); the test set never enters the
choice. A sweep needs a validation split (`data.val_per_class` > 0).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import Recipe, from_dict, merge
from tfkd_cli.config import identity
from tfkd_cli.tables.plan import PlannedRun

# Fields a grid may not vary: they do not define the run (runtime, data location, the label), or
# have their own option.
_NOT_GRID = {"seed": "the seeds come from --seed/--seeds", "name": "it is a label, not a run setting",
             "runtime": "runtime settings do not change a run's numbers", "data.root": "it is where the data lives",
             "data.download": "it does not change the run", "data.workers": "it does not change the run"}


@dataclass
class Axis:
    key: str  # dotted recipe field, e.g. loss.alpha
    values: list

    @property
    def short(self) -> str:
        return self.key.rsplit(".", 1)[-1]


@dataclass
class Point:
    params: dict  # key -> value
    runs: list[PlannedRun]  # one per seed

    @property
    def label(self) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={_show(v)}" for k, v in self.params.items())


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _split_values(raw: str) -> list[str]:
    """Comma-separated values; commas inside [...] stay (a list value such as [30,60])."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _scalar(text: str) -> Any:
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", v):
        return float(v)  # YAML 1.1 reads 1e-3 as a string; a user means the number
    return v


def check_key(key: str) -> None:
    """A grid key must name one leaf field of `Recipe` that defines the run."""
    for prefix, why in _NOT_GRID.items():
        if key == prefix or key.startswith(prefix + "."):
            raise TfkdError(f"--grid {key}: not a sweepable field ({why})")
    cls: Any = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = ".".join(parts[:i]) or "the recipe"
            raise TfkdError(f"--grid {key}: {part!r} is not a recipe field of {where}; allowed: {', '.join(names)}")
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                fields = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(tp))
                raise TfkdError(f"--grid {key}: a section, not a field; name one of {fields}")
            cls = tp
        elif i < len(parts) - 1:
            raise TfkdError(f"--grid {key}: {'.'.join(parts[:i + 1])} is a field, not a section")


def parse_grid(items: typing.Iterable[str]) -> list[Axis]:
    """`KEY=V1,V2,...` strings to axes; every key a run-defining recipe field, every axis non-empty."""
    axes: list[Axis] = []
    for item in items:
        if "=" not in item:
            raise TfkdError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid loss.alpha=0.1,0.5,0.9")
        key, raw = (s.strip() for s in item.split("=", 1))
        check_key(key)
        if any(a.key == key for a in axes):
            raise TfkdError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        texts = [t.strip() for t in _split_values(raw)] if raw.strip() else []
        if not texts or any(t == "" for t in texts):
            raise TfkdError(f"--grid {item!r}: empty value; expected KEY=V1,V2,... with no empty entries")
        values = [_scalar(t) for t in texts]
        if len({repr(v) for v in values}) < len(values):
            raise TfkdError(f"--grid {key}: a value is listed twice ({raw})")
        axes.append(Axis(key, values))
    if not axes:
        raise TfkdError("the grid is empty: give at least one --grid KEY=V1,V2,... (e.g. --grid loss.alpha=0.1,0.9)")
    return axes


def _nested(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


def _point_recipe(base: dict, params: dict, seed: int) -> Recipe:
    full = base
    for k, v in params.items():
        full = merge(full, _nested(k, v))
    full = merge(full, {"seed": seed})
    return from_dict(full, "sweep point " + ", ".join(f"{k}={_show(v)}" for k, v in params.items()))


def build_points(base: Recipe, axes: list[Axis], seeds: list[int], runs_dir: Path) -> list[Point]:
    """Every grid point with one planned run per seed; a value the recipe refuses is a one-line error."""
    runs_dir = Path(runs_dir).resolve()
    d = base.to_dict()
    for a in axes:  # each value alone first, so an error names the one value at fault
        typed = []
        for v in a.values:
            try:
                r = _point_recipe(d, {a.key: v}, seeds[0])
            except TfkdError as e:
                raise TfkdError(f"--grid {a.key}: value {v!r} is not allowed ({str(e).split(': ', 1)[-1]})") from None
            node: Any = r
            for part in a.key.split("."):
                node = getattr(node, part)
            typed.append(node)  # as the recipe holds it: 4 for a float field is 4.0
        if len({repr(v) for v in typed}) < len(typed):
            raise TfkdError(f"--grid {a.key}: two values are the same {a.key} ({', '.join(map(repr, a.values))})")
        a.values = typed
    points = []
    for combo in itertools.product(*(a.values for a in axes)):
        params = {a.key: v for a, v in zip(axes, combo)}
        runs = []
        for seed in seeds:
            r = _point_recipe(d, params, seed)
            if r.data.val_per_class <= 0:
                raise TfkdError("a sweep chooses on a validation split: set --val-per-class N "
                                "(data.val_per_class, images per class held out of training)")
            key = identity.run_key(r)
            pid = ",".join(f"{k.rsplit('.', 1)[-1]}={_show(v)}" for k, v in params.items())
            runs.append(PlannedRun(pid, seed, r, runs_dir / identity.run_name(r, key), key))
        points.append(Point(params, runs))
    return points


def check_data(points: list[Point]) -> None:
    """Load each distinct data setting once, so a bad path or a val split larger than a class's
    training images fails here in one line, before any run starts."""
    from tfkd_cli.data import build_data

    seen = set()
    for p in points:
        dc = p.runs[0].recipe.data
        sig = (dc.dataset, dc.root, dc.per_class, dc.subset_seed, dc.val_per_class)
        if sig in seen:
            continue
        seen.add(sig)
        build_data(dc.dataset, dc.root, download=dc.download, per_class=dc.per_class, subset_seed=dc.subset_seed,
                   val_per_class=dc.val_per_class, augment=False, workers=0)


def default_name(base: Recipe, axes: list[Axis]) -> str:
    return f"{base.data.dataset}_{base.model.replace(':', '-')}_{base.method}_" + "-".join(a.short for a in axes)


def sweep(base: Recipe, grid: typing.Iterable[str], *, seeds: int = 1, name: Optional[str] = None,
          out: Optional[str] = None, runs_dir: str = "runs/reproduce", jobs: Optional[int] = None,
          devices: Optional[list[str]] = None, dry_run: bool = False, report_only: bool = False,
          retry_failed: bool = False, log: Callable[[str], None] = print,
          echo: Callable[[str], None] = print) -> Optional[dict]:
    from tfkd_cli.sweep import report
    from tfkd_cli.execution.reproduce import format_plan
    from tfkd_cli.execution.runner import default_jobs, run_plan

    if seeds < 1:
        raise TfkdError(f"--seeds must be >= 1, got {seeds}")
    if jobs is not None and jobs < 1:
        raise TfkdError(f"--jobs must be >= 1, got {jobs}")
    jobs = jobs or default_jobs(devices)
    axes = parse_grid(grid)
    name = name or default_name(base, axes)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise TfkdError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    seed_list = list(range(base.seed, base.seed + seeds))
    points = build_points(base, axes, seed_list, Path(runs_dir))
    plan = [r for p in points for r in p.runs]
    if dry_run:
        echo(f"sweep {name}: {len(points)} points x {len(seed_list)} seeds, runs in {Path(runs_dir).resolve()}")
        from tfkd_cli.execution.cost import Calibration, committed_records

        echo(format_plan(plan, (devices or ["cpu"])[0], jobs, Calibration.from_records(committed_records())))
        return None
    if not report_only:
        check_data(points)
        run_plan(plan, jobs=jobs, devices=devices, retry_failed=retry_failed, log=log)
    res = report.build_results(name, axes, points, seed_list)
    files = report.write(res, Path(out) if out else Path("sweeps") / name)
    echo(report.to_markdown(res))
    log("wrote " + ", ".join(str(f) for f in files))
    return res
