"""Control runs of a table (issue #17): what a teacher's gain must beat to be the teacher's.

For every cell whose run has a teacher distribution (kd, kd_self, tfkd_reg), `add_controls`
adds two runs and two cells beside it, in columns `<column>~uniform` and `<column>~ce`:

* `<run>~uniform`: the same run with `teacher: {uniform: true}` (the method's own formula, the
  teacher's distribution replaced by the uniform one; no teacher run needed);
* `<run>~ce`: `ce` with `loss.label_weight = 1 - alpha`: the run's label term and nothing else.

Run directories are content-addressed (`plan`), so identical controls (two students of one
model and alpha from different teachers) are one run. `reproduce --no-controls` leaves them out.
The controls take alpha from the table (run, then run_defaults, then the method's default);
an alpha changed by a scale or --set is not followed.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

from tfkd_cli.methods import METHODS, uniform_methods
from tfkd_cli.config.recipe import pick
from tfkd_cli.tables.spec import Cell, Column, Row, Table

if TYPE_CHECKING:
    from tfkd_cli.tables import results

KINDS = {"uniform": "uniform teacher", "ce": "ce x (1-a)"}  # column suffix -> name in verdicts


def control_key(column: str, kind: str) -> str:
    return f"{column}~{kind}"


def is_control(key: str) -> bool:
    """Whether a column key (or run id) is a control's (`control_key`)."""
    return "~" in key


def _method(table: Table, rid: str) -> str:
    return pick([table.run_defaults, table.runs[rid]], "method") or "ce"


def control_specs(table: Table, rid: str) -> dict[str, dict]:
    """kind -> the partial run recipe of run `rid`'s control (empty for a run without a teacher)."""
    spec, method = table.runs[rid], _method(table, rid)
    if method not in uniform_methods():
        return {}
    alpha = pick([table.run_defaults, spec], "loss", "alpha")
    alpha = METHODS[method].defaults["alpha"] if alpha is None else alpha
    uniform = copy.deepcopy(spec)
    uniform["teacher"] = {"uniform": True}
    ce = {k: copy.deepcopy(v) for k, v in spec.items() if k not in ("teacher", "loss", "method")}
    ce.update(method="ce", loss={"label_weight": round(1.0 - alpha, 10)})
    return {"uniform": uniform, "ce": ce}


def add_controls(table: Table) -> Table:
    """The table with the control runs, columns and cells of every cell with a teacher."""
    runs = dict(table.runs)
    controlled: dict[str, list[str]] = {}  # column key -> its control kinds (in some row)
    rows = []
    for row in table.rows:
        cells = dict(row.cells)
        for key, cell in row.cells.items():
            if cell.run is None:
                continue
            for kind, spec in control_specs(table, cell.run).items():
                cid = control_key(cell.run, kind)
                runs[cid] = spec
                cells[control_key(key, kind)] = Cell(run=cid)
                if kind not in controlled.setdefault(key, []):
                    controlled[key].append(kind)
        rows.append(Row(row.label, cells, row.note))
    columns = []
    for col in table.columns:
        columns.append(col)
        columns += [Column(control_key(col.key, k), f"{col.title} [{KINDS[k]}]") for k in controlled.get(col.key, [])]
    return replace(table, runs=runs, rows=rows, columns=columns)


def controls_of(cells: dict[str, results.Cell], column: str) -> dict[str, results.Cell]:
    """The result cells of a column's controls in one row: name -> cell (empty when none)."""
    return {name: cells[control_key(column, k)] for k, name in KINDS.items() if control_key(column, k) in cells}
