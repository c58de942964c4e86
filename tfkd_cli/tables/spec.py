"""Table recipes and scale overlays: what a paper table is, as data.

recipes/tables/index.yaml is the one place that maps a table id (and its aliases) to a
recipe file: the paper's own table numbers are unverified (recipes/paper/tables.md §0),
so a correction changes only that file.

A table recipe declares
  runs:         run id -> a partial run recipe (`tfkd_cli.config.recipe.Recipe` fields), where
                `teacher: {run: ID, epoch: N, ratio: R}` names another run of the table (a
                dependency): at the paper scale its checkpoint after N epochs; at a scale with
                `pt_teachers: strength` the epoch whose test top-1 is nearest R x its final
                test top-1 (`tfkd_cli.storage.strength`; R is the paper's pt-teacher / full accuracy)
                and `release: base_<name>` names the folder of the authors' released weights
                that can stand in for this run (`reproduce --teachers DIR`);
  run_defaults: fields shared by every run;
  columns:      the paper table's columns, in order;
  rows:         per row a label and, per column, a cell {run, epoch, ratio, name, paper,
                paper_std, paper_gain, note}; `paper: null` means the number was not found
                (shown n/a); a pt-teacher cell's epoch and ratio are its students' reference's;
  claims:       per row verdicts: column X `improves` on column Y, or `matches` it within a
                tolerance.
A scale overlay (recipes/scales/<scale>.yaml) declares `epoch_factor` (epochs, milestones,
kept epochs and teacher epochs scale in proportion), `overrides` merged into every run, and
`per_model` overrides merged into the runs of one model after those (e.g. a narrower width
for a model that would otherwise dominate the scale's compute; `epoch_factor` there replaces
the scale's for that model's runs, e.g. more epochs for a model that needs them to fit), and `pt_teachers`: `epoch`
(default; the paper scale: a De-KD teacher is its run after the table's epoch, scaled) or
`strength` (a De-KD teacher reference takes its `ratio`; a run that keeps epoch checkpoints
in its table, i.e. a pt-teacher source, trains the full baseline schedule and keeps every
epoch, see `plan`). `--scale` takes a scale's name or the path of such a file (its `scale:`
name defaults to the file's stem).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tfkd_cli.errors import TfkdError
from tfkd_cli.models import canonical_name
from tfkd_cli.config.recipe import load_layers, read_yaml, recipes_dir
from tfkd_cli.config.checks import coerce
from tfkd_cli.storage.strength import check_ratio


@dataclass
class Cell:
    run: Optional[str] = None  # run id whose test top-1 fills the cell
    epoch: Optional[int] = None  # use the run's top-1 at this epoch (a pt-teacher), not its reported one
    ratio: Optional[float] = None  # pt-teacher at a strength scale: the paper's ratio (tfkd_cli.storage.strength)
    name: Optional[str] = None  # display name, e.g. "ResNet18"
    paper: Optional[float] = None  # the paper's number (mean); null = not found
    paper_std: Optional[float] = None
    paper_gain: Optional[float] = None  # gain as printed in the paper
    note: Optional[str] = None


@dataclass
class Column:
    key: str
    title: str


@dataclass
class Claim:
    column: str  # the treated cell
    baseline: str  # the cell it is compared with
    text: str  # e.g. "De-KD improved the student"
    kind: Literal["improves", "matches"] = "improves"
    tolerance: float = 0.0  # `matches`: column >= baseline - tolerance


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    note: Optional[str] = None


@dataclass
class Table:
    table: str
    title: str
    source: str
    status: Literal["complete", "partial"]
    dataset: str
    columns: list[Column]
    rows: list[Row]
    runs: dict[str, dict]
    run_defaults: dict = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    releases: dict[str, str] = field(default_factory=dict)  # run id -> release folder name
    notes: list[str] = field(default_factory=list)
    file: Optional[Path] = None


@dataclass
class Scale:
    scale: str
    description: str
    epoch_factor: float = 1.0
    overrides: dict = field(default_factory=dict)
    per_model: dict = field(default_factory=dict)  # model name -> overrides for its runs
    comparable_with_paper: bool = False
    data_note: Optional[str] = None
    pt_teachers: Literal["epoch", "strength"] = "epoch"  # how a De-KD teacher is chosen (module doc)
    regime_notes: dict = field(default_factory=dict)  # model -> why its CE baseline may miss the regime bar

    def factor(self, model: str) -> float:
        """The epoch factor of `model`'s runs: its per_model one, else the scale's."""
        return self.per_model.get(canonical_name(model), {}).get("epoch_factor", self.epoch_factor)


TABLE_KEYS = {"table", "title", "source", "status", "dataset", "columns", "rows", "runs", "run_defaults",
              "claims", "notes"}


def index() -> dict[str, dict]:
    """id -> {file, aliases, paper_table}, from recipes/tables/index.yaml."""
    path = recipes_dir() / "tables" / "index.yaml"
    data = read_yaml(path)
    out = {}
    for tid, entry in data.items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise TfkdError(f"{path}: entry {tid!r} needs a 'file'")
        out[tid] = entry
    return out


def table_ids() -> list[str]:
    return list(index())


def resolve_id(name: str) -> str:
    """A table id from an id or alias; one-line error listing the ids."""
    idx = index()
    if name in idx:
        return name
    for tid, entry in idx.items():
        if name in (entry.get("aliases") or []):
            return tid
    raise TfkdError(f"unknown table {name!r}; choose from: {', '.join(idx)} (tfkd reproduce --list)")


def load_table(name: str) -> Table:
    tid = resolve_id(name)
    path = recipes_dir() / "tables" / index()[tid]["file"]
    return parse_table(load_layers(path), path)


def parse_table(data: dict, path: Path) -> Table:
    src = str(path)
    unknown = set(data) - TABLE_KEYS
    if unknown:
        raise TfkdError(f"{src}: unknown table key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TABLE_KEYS))}")
    for key in ("table", "title", "source", "status", "dataset", "columns", "rows", "runs"):
        if key not in data:
            raise TfkdError(f"{src}: missing key '{key}'")
    try:
        columns = [coerce(c, Column, f"columns[{i}]") for i, c in enumerate(data["columns"])]
        claims = [coerce(c, Claim, f"claims[{i}]") for i, c in enumerate(data.get("claims") or [])]
    except TfkdError as e:
        raise TfkdError(f"{src}: {e}") from None
    keys = [c.key for c in columns]
    runs = data["runs"]
    if not isinstance(runs, dict) or not runs:
        raise TfkdError(f"{src}: runs must be a non-empty mapping of run id -> recipe fields")
    releases = {}
    clean_runs = {}
    for rid, spec in runs.items():
        spec = dict(spec or {})
        rel = spec.pop("release", None)
        if rel is not None:
            releases[rid] = rel
        t = spec.get("teacher") or {}
        if "run" in t and t["run"] not in runs:
            raise TfkdError(f"{src}: run {rid!r} names teacher run {t['run']!r}, which the table does not declare")
        if t.get("ratio") is not None:
            check_ratio(t["ratio"], f"{src}: run {rid!r} teacher")
            if t.get("epoch") is None:  # the paper scale keeps the official epoch
                raise TfkdError(f"{src}: run {rid!r}: a teacher reference with a ratio needs the paper's epoch too")
        clean_runs[rid] = spec
    rows = []
    for i, r in enumerate(data["rows"]):
        r = dict(r)
        label = r.pop("label", None)
        note = r.pop("note", None)
        if not label:
            raise TfkdError(f"{src}: rows[{i}] needs a label")
        cells = {}
        for k, v in r.items():
            if k not in keys:
                raise TfkdError(f"{src}: rows[{i}] ({label}) has cell {k!r}, not a column; columns: {', '.join(keys)}")
            try:
                cell = coerce(v or {}, Cell, f"rows[{i}].{k}")
            except TfkdError as e:
                raise TfkdError(f"{src}: {e}") from None
            if cell.ratio is not None:
                check_ratio(cell.ratio, f"{src}: rows[{i}].{k}")
            if cell.run is not None and cell.run not in runs:
                raise TfkdError(f"{src}: rows[{i}].{k} names run {cell.run!r}, which the table does not declare")
            cells[k] = cell
        rows.append(Row(label, cells, note))
    for c in claims:
        if c.column not in keys or c.baseline not in keys:
            raise TfkdError(f"{src}: claim {c.text!r} compares {c.column!r} with {c.baseline!r}; columns: {', '.join(keys)}")
    return Table(table=data["table"], title=data["title"], source=data["source"], status=data["status"],
                 dataset=data["dataset"], columns=columns, rows=rows, runs=clean_runs,
                 run_defaults=data.get("run_defaults") or {}, claims=claims, releases=releases,
                 notes=list(data.get("notes") or []), file=path)


def load_scale(name: str) -> Scale:
    """A scale by name (recipes/scales/<name>.yaml) or a scale overlay file of the same form."""
    d = recipes_dir() / "scales"
    path = d / f"{name}.yaml"
    if not path.is_file():
        path = Path(name)
    if not path.is_file():
        have = sorted(p.stem for p in d.glob("*.yaml"))
        raise TfkdError(f"unknown scale {name!r} (not a scale name, nor a file); choose from: "
                        f"{', '.join(have)}, or a scale overlay file (recipes/scales/*.yaml shows the form)")
    data = load_layers(path)
    data.setdefault("scale", path.stem)  # an overlay file may leave out its name and description
    data.setdefault("description", f"scale overlay {path}")
    try:
        s = coerce(data, Scale, "scale")
    except TfkdError as e:
        raise TfkdError(f"{path}: {e}") from None
    if s.epoch_factor <= 0:
        raise TfkdError(f"{path}: epoch_factor must be > 0")
    per_model = {}
    for name, key, over in _by_model(path, "per_model", s.per_model):
        if not isinstance(over, dict):
            raise TfkdError(f"{path}: per_model.{name} must be a mapping of recipe fields, got {over!r}")
        f = over.get("epoch_factor")
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0):
            raise TfkdError(f"{path}: per_model.{name}.epoch_factor must be a number > 0, got {f!r}")
        per_model[key] = over
    s.per_model = per_model
    notes = {}
    for name, key, why in _by_model(path, "regime_notes", s.regime_notes):
        if not isinstance(why, str) or not why.strip():
            raise TfkdError(f"{path}: regime_notes.{name} must be a sentence, got {why!r}")
        notes[key] = why
    s.regime_notes = notes
    return s


def _by_model(path: Path, what: str, mapping: Optional[dict]):
    """(name as written, canonical model name, value) for each entry of a scale's by-model
    mapping; an unknown model is a one-line error naming the file and the mapping."""
    for name, value in (mapping or {}).items():
        try:
            yield name, canonical_name(name), value
        except TfkdError as e:
            raise TfkdError(f"{path}: {what}: {e}") from None
