"""A results table as typed data, and table.json: its one schema.

`report.build_results` makes a `Results`; table.md, table.csv, table.png, curves.png and
`tfkd compare` read it. `Results.to_dict` / `Results.from_dict` are the only writer and
reader of table.json, so a field is added or renamed here once.

Schema versions (the `schema` key of table.json):

1. no `schema` key: every table written before it (today's and results/archive's; the
   archive's lack newer keys such as `shown`, `n_planned` and `runs_missing`);
2. `schema: 2`: the keys of the last version-1 tables, in the same order;
3. `schema: 3`: the header's `regime` (each CE baseline against the reduced scales' bar).

Every field has a default: None for a number or string, empty for a list or dict. A key that
a table from older (or hand-written) code lacks reads as that default, and `Results.schema`
says which version was read. A table from newer code is refused: its meaning may differ.

The class names mirror the table recipe's (`spec.Cell`, `spec.Row`, ...): a recipe cell says
what to run, a results cell what came out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Optional

from tfkd_cli.errors import TfkdError

SCHEMA_VERSION = 3
FILE = "table.json"


def _value(v):
    """A field's JSON value: nested results objects become dicts, lists and dicts are copied."""
    if is_dataclass(v):
        return v.to_dict()
    if isinstance(v, list):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    return v


def _plain(obj, skip: tuple[str, ...] = ()) -> dict:
    """Every field of `obj` but `skip`, in declared order (the order of table.json's keys)."""
    return {f.name: _value(getattr(obj, f.name)) for f in fields(obj) if f.name not in skip}


def _load(cls, d: dict, **nested):
    """`cls` from the keys of `d` it names (a missing key takes the field's default, an unknown
    one is dropped); `nested` gives the fields that are results objects themselves."""
    if not isinstance(d, dict):
        raise TfkdError(f"results: expected an object for {cls.__name__}, got {type(d).__name__}")
    kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
    return cls(**{**kw, **nested})


class _Record:
    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict):
        return _load(cls, d)


@dataclass
class Pick(_Record):
    """The pt-teacher epoch `strength.choose` picked for one seed."""
    epoch: Optional[int] = None
    top1: Optional[float] = None
    final_top1: Optional[float] = None
    ratio: Optional[float] = None  # top1 / final_top1


@dataclass
class TeacherFile(_Record):
    """The checkpoint a student distilled from (provenance)."""
    source: Optional[str] = None
    file: Optional[str] = None  # `<run dir>/<file>` for a run of the table, else as given
    sha256: Optional[str] = None
    top1: Optional[float] = None  # its test top-1 as the student measured it


@dataclass
class Failure(_Record):
    run: Optional[str] = None
    error: Optional[str] = None


@dataclass
class Provenance(_Record):
    """What made the runs: taken from the first finished run's summary.json."""
    tfkd: Optional[str] = None
    git_commit: Optional[str] = None
    torch: Optional[str] = None
    torchvision: Optional[str] = None
    python: Optional[str] = None
    device: Optional[str] = None
    hardware: Optional[str] = None


# a cell with a run has these too; one without (a paper number only) does not write them
MEASURED = ("values", "n_planned", "best_mean", "last_mean", "train_top1_mean", "runs", "teachers",
            "n_selected", "selected_mean", "selected_std", "run_epoch", "ratio", "picks", "method",
            "teacher_share_first", "teacher_share_last", "delta_paper")


@dataclass
class Cell(_Record):
    """One cell: the paper's number and ours (top-1 in %, mean and std over seeds)."""
    name: Optional[str] = None  # display name, e.g. "ResNet18"
    paper: Optional[float] = None
    paper_std: Optional[float] = None
    paper_gain: Optional[float] = None
    note: Optional[str] = None
    run: Optional[str] = None  # the table's run id; None: not run
    epoch: Optional[int] = None  # a pt-teacher cell: the paper's epoch
    mean: Optional[float] = None
    std: Optional[float] = None
    n: Optional[int] = None  # seeds behind the mean
    values: list[float] = field(default_factory=list)  # per seed
    n_planned: Optional[int] = None
    best_mean: Optional[float] = None  # best-epoch test top-1
    last_mean: Optional[float] = None  # last-epoch test top-1
    train_top1_mean: Optional[float] = None  # final train top-1 (augmented batches)
    runs: list[str] = field(default_factory=list)  # run directory names (or release paths)
    teachers: list[TeacherFile] = field(default_factory=list)
    n_selected: Optional[int] = None  # seeds with a validation-selected epoch
    selected_mean: Optional[float] = None
    selected_std: Optional[float] = None
    run_epoch: Optional[int] = None  # the teacher epoch read at this scale
    ratio: Optional[float] = None  # a pt-teacher at a strength scale: the paper's ratio
    picks: list[Pick] = field(default_factory=list)
    method: Optional[str] = None
    teacher_share_first: Optional[float] = None
    teacher_share_last: Optional[float] = None
    delta_paper: Optional[float] = None  # mean - paper
    gain_over: dict[str, Optional[float]] = field(default_factory=dict)  # baseline column -> gain

    def to_dict(self) -> dict:
        d = _plain(self, () if self.run else MEASURED)
        if not self.gain_over:  # only a claim's treated cell has it
            del d["gain_over"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        return _load(cls, d, teachers=[TeacherFile.from_dict(t) for t in d.get("teachers") or []],
                     picks=[Pick.from_dict(p) for p in d.get("picks") or []])


@dataclass
class Claim(_Record):
    """A claim of a row (column X improves on / matches column Y) and its verdicts."""
    text: Optional[str] = None
    kind: Optional[str] = None  # improves / matches
    column: Optional[str] = None  # the treated cell's column
    baseline: Optional[str] = None  # the column it is compared with
    gain: Optional[float] = None  # ours: mean(column) - mean(baseline)
    paper_gain: Optional[float] = None
    verdict: Optional[str] = None  # yes / no / inconclusive / n/a
    reason: Optional[str] = None  # why inconclusive (or why no)
    paper_verdict: Optional[str] = None
    noise: Optional[str] = None  # clear / within noise / 1 seed
    controls_verdict: Optional[str] = None  # "beats its controls?"; None: the claim has no controls
    controls_reason: Optional[str] = None

    def to_dict(self) -> dict:
        return _plain(self, () if self.controls_verdict is not None else ("controls_verdict", "controls_reason"))


@dataclass
class Column(_Record):
    key: Optional[str] = None
    title: Optional[str] = None


@dataclass
class Row(_Record):
    label: Optional[str] = None  # the recipe's label: compare matches rows across scales by it
    shown: Optional[str] = None  # the label with the epochs this scale used (older tables: None)
    note: Optional[str] = None
    cells: dict[str, Cell] = field(default_factory=dict)  # column key -> cell
    claims: list[Claim] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        return _load(cls, d, cells={k: Cell.from_dict(c) for k, c in (d.get("cells") or {}).items()},
                     claims=[Claim.from_dict(c) for c in d.get("claims") or []])


@dataclass
class Regime(_Record):
    """A CE baseline against the regime bar (`verdicts.regime_miss`): the table's claims about
    regularisation can only be tested where it holds."""
    name: Optional[str] = None  # display name, e.g. "ResNet18"
    run: Optional[str] = None  # the table's run id
    test: Optional[float] = None  # reported test top-1, mean over seeds
    train: Optional[float] = None  # final train top-1, mean over seeds
    gap: Optional[float] = None  # train - last-epoch test
    held: Optional[bool] = None  # None: a number is unknown
    miss: Optional[str] = None  # which part of the bar it missed, measured
    why: Optional[str] = None  # the scale's account of the miss (its regime_notes)


@dataclass
class Header(_Record):
    """How the table was made: scale, seeds, runs, compute, code and versions."""
    scale: Optional[str] = None
    scale_description: Optional[str] = None
    comparable_with_paper: Optional[bool] = None
    dataset: Optional[str] = None
    data_note: Optional[str] = None
    seeds: list[int] = field(default_factory=list)
    runs_total: Optional[int] = None
    runs_finished: Optional[int] = None
    runs_failed: list[Failure] = field(default_factory=list)
    runs_missing: list[str] = field(default_factory=list)
    compute_time_s: Optional[float] = None
    compute_train_only_runs: Optional[int] = None  # runs that recorded training time only
    generated: Optional[str] = None  # when the report was written (UTC, ISO 8601)
    generated_by: Optional[str] = None  # the commit of the code that wrote it
    provenance: Optional[Provenance] = None  # None: no run finished; its keys sit inline in table.json
    git_commits: list[str] = field(default_factory=list)  # the runs' commits
    val_selected: Optional[bool] = None  # some cell has validation-selected numbers
    record_gaps: list[str] = field(default_factory=list)  # records that lack a field
    overrides: list[str] = field(default_factory=list)  # --set, every run
    regime: list[Regime] = field(default_factory=list)  # the CE baselines against the bar (schema 3)

    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "provenance":
                d.update(v.to_dict() if v else {})
            else:
                d[f.name] = _value(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Header:
        names = [f.name for f in fields(Provenance)]
        prov = Provenance.from_dict(d) if any(k in d for k in names) else None
        return _load(cls, d, provenance=prov, runs_failed=[Failure.from_dict(f) for f in d.get("runs_failed") or []],
                     regime=[Regime.from_dict(r) for r in d.get("regime") or []])


@dataclass
class Results(_Record):
    """A results table: results/<table>/<scale>/table.json."""
    table: Optional[str] = None  # the table's id, e.g. "table3"
    title: Optional[str] = None
    source: Optional[str] = None  # where the paper's numbers are from
    status: Optional[str] = None  # the table recipe's: complete / partial
    paper_dataset: Optional[str] = None
    columns: list[Column] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    header: Header = field(default_factory=Header)
    schema: int = SCHEMA_VERSION  # the version read (from_dict); to_dict always writes SCHEMA_VERSION

    @property
    def older(self) -> bool:
        """Read from a table.json of an older schema (fields it lacked are None or empty)."""
        return self.schema < SCHEMA_VERSION

    def claims(self) -> list[Claim]:
        return [cl for r in self.rows for cl in r.claims]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_VERSION, **_plain(self, ("schema",))}

    @classmethod
    def from_dict(cls, d: dict) -> Results:
        if not isinstance(d, dict):
            raise TfkdError(f"results: expected an object, got {type(d).__name__}")
        version = d.get("schema", 1)
        if type(version) is not int or version < 1:
            raise TfkdError(f"results: unknown schema version {version!r} (this tfkd reads 1 to {SCHEMA_VERSION})")
        if version > SCHEMA_VERSION:
            raise TfkdError(f"results: schema version {version} is newer than this tfkd reads "
                            f"(1 to {SCHEMA_VERSION}); update tfkd to read it")
        return _load(cls, d, schema=version, columns=[Column.from_dict(c) for c in d.get("columns") or []],
                     rows=[Row.from_dict(r) for r in d.get("rows") or []],
                     header=Header.from_dict(d.get("header") or {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def read(path: Path) -> Results:
    """A table.json (or the results folder holding one); a file that cannot be read or is of
    an unknown version is a one-line TfkdError naming it."""
    p = Path(path)
    p = p / FILE if p.is_dir() else p
    try:
        return Results.from_dict(json.loads(p.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TfkdError(f"cannot read {p}: {e}") from None
    except TfkdError as e:
        raise TfkdError(f"{p}: {e}") from None
