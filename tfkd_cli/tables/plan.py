"""From a table recipe, a scale and seeds to a plan: every run, resolved, in dependency order.

Run directories are content-addressed: `<runs_dir>/<model>_<method>_s<seed>_<key>`, where
the key hashes the run's resolved recipe with its teacher replaced by the teacher's own key.
So a run shared by several rows (the ResNet18 teacher) or several tables is planned and
trained once, and a finished run is recognised by its directory alone. A run directory
written under identity version 1 (`tfkd_cli.config.identity`) keeps its name: when
it exists and the new one does not, the plan uses it (finished or resumable).

A run's recipe layers, lowest first (`recipe.resolve_layers`, as a single run's): Recipe
defaults < the profile of the table's dataset (recipes/datasets/) < the table's run_defaults <
the run < the scale (`scaled`: epoch factor, then overrides, then per_model) < `--set` (`sets`).
The profile is the table's dataset's, not that of a dataset a scale or --set swaps in: a table
on other data keeps the table's protocol.

At a scale with `pt_teachers: strength` (spec.Scale) a run that keeps epoch checkpoints in its
table (a De-KD teacher source) drops the table's `epochs`/`keep_epochs`, trains the scaled
baseline schedule and keeps every epoch; its students carry `teacher.ratio` instead of an
epoch, resolved when they load it (`tfkd_cli.storage.strength`). The rule reads the run's own spec, so
a run shared by several tables (ResNet18) stays one run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError
from tfkd_cli.models import canonical_name, is_torchvision
from tfkd_cli.config import identity
from tfkd_cli.config.recipe import DataCfg, Recipe, from_dict, merge, pick, resolve_layers
from tfkd_cli.tables.spec import Scale, Table


@dataclass
class PlannedRun:
    id: str  # run id in the table recipe
    seed: int
    recipe: Recipe
    dir: Path
    key: str
    legacy_key: Optional[str] = None  # the key identity version 1 gave it
    deps: list[tuple[str, int]] = field(default_factory=list)  # (run id, seed) it needs finished
    release: Optional[Path] = None  # set when the authors' released weights stand in for it
    record: Optional[Path] = None  # its finished record (tables/records.py), when there is one

    @property
    def source(self) -> Path:
        """Where its results are read: the run directory once finished there, else its record."""
        if self.record is not None and not rundir.is_finished(self.dir):
            return self.record
        return self.dir

    @property
    def name(self) -> str:
        return f"{self.id}@s{self.seed}"

    @property
    def external(self) -> bool:
        return self.release is not None


def scale_epoch(e: int, factor: float) -> int:
    """An epoch count under a scale: in proportion, at least 1."""
    return max(1, round(e * factor))


def _apply_scale(d: dict, factor: float) -> dict:
    """Scale epochs, milestones, kept epochs and teacher epochs of a full recipe dict."""
    if factor == 1.0:
        return d
    d = copy.deepcopy(d)
    d["train"]["epochs"] = scale_epoch(d["train"]["epochs"], factor)
    d["train"]["keep_epochs"] = sorted({scale_epoch(e, factor) for e in d["train"]["keep_epochs"]})
    ms = sorted({scale_epoch(m, factor) for m in d["optim"]["milestones"]})
    d["optim"]["milestones"] = [m for m in ms if m < d["train"]["epochs"]] or ms[:1]
    if d["teacher"].get("epoch") is not None:
        d["teacher"]["epoch"] = scale_epoch(d["teacher"]["epoch"], factor)
    return d


def scaled(full: dict, scale: Scale) -> dict:
    """A full recipe dict under `scale`: its model's epoch factor (per_model, else the scale's),
    then the scale's overrides, then the model's own."""
    own = dict(scale.per_model.get(canonical_name(full["model"]), {}))
    full = _apply_scale(full, own.pop("epoch_factor", scale.epoch_factor))
    return merge(merge(full, scale.overrides), own)


def _keeps_epochs(spec: dict) -> bool:
    """Whether a table's run keeps epoch checkpoints: the source of a De-KD teacher."""
    return bool((spec.get("train") or {}).get("keep_epochs"))


def _teacher(t: dict, dep: PlannedRun, epoch: Optional[int], ratio: Optional[float], strength: bool,
             where: str) -> tuple[str, Optional[str]]:
    """Point the teacher section `t` of a student at its teacher run `dep`; the teacher's key
    (and identity version 1 key) for the student's own. `epoch`, `ratio`: the table's teacher
    reference; at a strength scale the ratio replaces the epoch (the released files excepted)."""
    t["path"] = str(dep.release or dep.dir)
    if dep.release is not None:
        # The released files are the paper's full-width models at paper epochs
        # (base_resnet50/50.pth.tar = after 51 epochs), whatever the scale.
        t.update(model=dep.recipe.model, width=1.0, epoch=epoch)
        return (f"release:{dep.release.resolve()}",) * 2
    t["model"] = None
    train = dep.recipe.train
    if strength and (epoch is not None or ratio is not None):
        if ratio is None:
            raise TfkdError(f"{where}: at a scale with pt_teachers: strength its teacher reference needs "
                            f"the paper's ratio (teacher: {{run: {dep.id}, epoch: {epoch}, ratio: R}})")
        if train.keep_epochs != list(range(1, train.epochs + 1)):
            raise TfkdError(f"{where}: its teacher {dep.id!r} is picked by strength (pt_teachers: strength) "
                            "but does not keep every epoch (give it train.keep_epochs in the table)")
        t.update(epoch=None, ratio=ratio)  # the epoch is resolved from the finished teacher run
    elif epoch is not None:
        if t["epoch"] not in train.keep_epochs and t["epoch"] != train.epochs:
            raise TfkdError(f"{where} uses epoch {t['epoch']} of {dep.id!r}, which does not keep it "
                            "(train.keep_epochs)")
    return dep.key, dep.legacy_key


def _order(table: Table) -> list[str]:
    """Run ids with every teacher before its students (a cycle is a recipe error)."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(rid: str) -> None:
        if rid in done:
            return
        if rid in visiting:
            raise TfkdError(f"{table.file}: teacher references form a cycle at run {rid!r}")
        visiting.add(rid)
        t = (table.runs[rid].get("teacher") or {}).get("run")
        if t:
            visit(t)
        visiting.discard(rid)
        done.append(rid)

    for rid in table.runs:
        visit(rid)
    return done


def build_plan(table: Table, scale: Scale, seeds: list[int], runs_dir: Path,
               teachers: Optional[Path] = None, only: Optional[set[str]] = None,
               sets: Optional[dict] = None) -> list[PlannedRun]:
    """Every (run, seed) of the table, resolved and ordered; `only` keeps those runs and their deps.

    `sets` (parsed `--set` overrides) apply to every run, after the scale."""
    runs_dir = Path(runs_dir).resolve()
    strength = scale.pt_teachers == "strength"
    plan: list[PlannedRun] = []
    by_id: dict[tuple[str, int], PlannedRun] = {}
    for seed in seeds:
        for rid in _order(table):
            spec = copy.deepcopy(table.runs[rid])
            t = spec.pop("teacher", None) or {}
            teacher_run, teacher_epoch, ratio = t.pop("run", None), t.get("epoch"), t.pop("ratio", None)
            source = strength and _keeps_epochs(spec)
            if source:  # a pt-teacher source trains the whole baseline schedule (module doc)
                spec["train"] = {k: v for k, v in spec["train"].items() if k not in ("epochs", "keep_epochs")}
            dataset = pick([table.run_defaults, spec], "data", "dataset") or DataCfg.dataset
            full = resolve_layers([table.run_defaults, spec, {"teacher": t} if t else {}], dataset=dataset,
                                  scale=lambda d: scaled(d, scale), sets=[sets or {}])
            if source:  # every epoch kept: the strength pick may choose any (small at these scales)
                full["train"]["keep_epochs"] = list(range(1, full["train"]["epochs"] + 1))
            if is_torchvision(full["model"]):
                full["width"] = 1.0  # width multipliers exist for the CIFAR models only
            full["seed"] = seed
            full["name"] = rid
            deps = []
            teacher_key = legacy_teacher_key = None
            if teacher_run:
                dep = by_id[(teacher_run, seed)]
                deps.append((teacher_run, seed))
                where = f"{table.file}: run {rid!r}"
                if teacher_epoch is not None:  # the teacher's epochs scale by its own model's factor
                    full["teacher"]["epoch"] = scale_epoch(teacher_epoch, scale.factor(dep.recipe.model))
                teacher_key, legacy_teacher_key = _teacher(full["teacher"], dep, teacher_epoch, ratio,
                                                           strength, where)
            recipe = from_dict(full, f"{table.file} run {rid}")
            key = identity.run_key(recipe, teacher_key)
            legacy = identity.legacy_key(recipe, legacy_teacher_key) if legacy_teacher_key or not teacher_run else None
            release = None
            if teachers is not None and rid in table.releases:
                release = Path(teachers) / table.releases[rid]
            d = runs_dir / identity.run_name(recipe, key)
            if legacy and not d.exists() and (runs_dir / identity.run_name(recipe, legacy)).exists():
                d = runs_dir / identity.run_name(recipe, legacy)  # written before identity version 2
            pr = PlannedRun(rid, seed, recipe, d, key, legacy, deps, release)
            plan.append(pr)
            by_id[(rid, seed)] = pr
    return _only(plan, by_id, only) if only else plan


def _only(plan: list[PlannedRun], by_id: dict[tuple[str, int], PlannedRun], only: set[str]) -> list[PlannedRun]:
    """The runs of `plan` named in `only`, with everything they need (teachers first, as planned)."""
    keep: set[tuple[str, int]] = set()

    def need(k: tuple[str, int]) -> None:
        if k not in keep:
            keep.add(k)
            for dep in by_id[k].deps:
                need(dep)

    for p in plan:
        if p.id in only:
            need((p.id, p.seed))
    return [p for p in plan if (p.id, p.seed) in keep]


def unique_runs(plan: list[PlannedRun]) -> list[PlannedRun]:
    """Plan entries with distinct directories (two run ids may resolve to one run)."""
    seen: dict[Path, PlannedRun] = {}
    for p in plan:
        seen.setdefault(p.dir, p)
    return list(seen.values())
