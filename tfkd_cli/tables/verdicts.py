"""Claim verdicts that say when a claim was not tested: `yes`, `no` or `inconclusive (<reason>)`.

Pure functions of results-table cells (`results.Cell`: mean, std, n, last_mean,
train_top1_mean, method, all top-1 in %). The thresholds and the data behind them are in
docs/verdicts.md. A claim is inconclusive when

* a run it compares did not train: its final train top-1 is below `chance_multiple` x chance,
  or below `baseline_fraction` x the train top-1 of its row's CE baseline; or
* it is a regularisation claim (a regulariser `improves` on a CE baseline) and that baseline
  does not fit its training set better than its test set: train - test < `min_fit_gap` points
  (a regulariser has nothing to correct in a model that does not over-fit).

except that a claim whose treated run did not train while both its controls (the same loss
weights, no teacher) trained is `no`: the teacher stopped it, not the loss scaling.

The second verdict, `beats_controls`, asks whether a gain is attributable to the teacher: the
treated cell must beat every control (the uniform-teacher run and ce with label_weight = 1 - a)
by more than two standard errors over seeds, the noise definition of `report._noise`
(se = sqrt(std_a^2/n_a + std_b^2/n_b)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from tfkd_cli.tables.controls import KINDS, controls_of

if TYPE_CHECKING:
    from tfkd_cli.tables.results import Cell

Outcome = Literal["yes", "no", "inconclusive", "n/a"]


@dataclass(frozen=True)
class Thresholds:
    chance_multiple: float = 2.0  # trained: final train top-1 >= 2 x chance
    baseline_fraction: float = 0.5  # trained: >= half of its row's CE baseline's train top-1
    min_fit_gap: float = 5.0  # regularisation claim: baseline train - test >= 5 points
    regime_test_multiple: float = 10.0  # a CE baseline's regime bar: test top-1 >= 10 x chance,
    # but at most halfway from chance to 100% (10 x chance is out of reach with 10 classes)


DEFAULT = Thresholds()


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: Optional[str] = None  # why inconclusive (or a qualifier such as "within noise")

    def __str__(self) -> str:
        return self.outcome if self.reason is None else f"{self.outcome} ({self.reason})"


def _f(x: float) -> str:
    return f"{x:.2f}"


def not_trained(cell: Cell, name: str, chance: float, baseline: Optional[Cell] = None,
                th: Thresholds = DEFAULT) -> Optional[str]:
    """Why `cell` did not train, or None when it did (or its train top-1 is unknown: nothing
    to judge by). `chance` is 100/K %; `baseline` the row's CE baseline cell (None for itself)."""
    train = cell.train_top1_mean
    if train is None:
        return None
    floor = th.chance_multiple * chance
    if train < floor:
        return f"{name} did not train: train top-1 {_f(train)} < {th.chance_multiple:g}x chance ({_f(floor)})"
    ref = None if baseline is None else baseline.train_top1_mean
    if ref is not None and train < th.baseline_fraction * ref:
        return (f"{name} did not train: train top-1 {_f(train)} < {th.baseline_fraction:g}x "
                f"the baseline's ({_f(ref)})")
    return None


def fit_gap(baseline: Cell) -> Optional[float]:
    """Final train top-1 minus last-epoch test top-1 (reported top-1 when last is unknown)."""
    train = baseline.train_top1_mean
    test = baseline.last_mean if baseline.last_mean is not None else baseline.mean
    return None if train is None or test is None else train - test


def regime_floor(chance: float, th: Thresholds = DEFAULT) -> float:
    """The regime bar's test top-1 (%): `regime_test_multiple` x chance, at most halfway to 100."""
    return min(th.regime_test_multiple * chance, (100.0 + chance) / 2)


def regime_miss(baseline: Cell, chance: float, th: Thresholds = DEFAULT) -> Optional[str]:
    """Why a CE baseline misses the regime a reduced scale is built for, or None when it holds
    (or its numbers are unknown): test top-1 >= `regime_test_multiple` x chance, so there is
    something to improve, and train - test >= `min_fit_gap` points, so a regulariser has an
    over-fit to correct. A miss leaves the regularisation claims against it inconclusive."""
    why = []
    floor = regime_floor(chance, th)
    if baseline.mean is not None and baseline.mean < floor:
        why.append(f"test top-1 {_f(baseline.mean)} < {_f(floor)}")
    gap = fit_gap(baseline)
    if gap is not None and gap < th.min_fit_gap:
        why.append(f"train - test {gap:+.2f} < {th.min_fit_gap:g} points")
    return "; ".join(why) or None


def inconclusive_reason(treated: Cell, compared: Cell, baseline: Cell, *, chance: float,
                        regularisation: bool, names: tuple[str, str] = ("treated", "baseline"),
                        th: Thresholds = DEFAULT) -> Optional[str]:
    """The first reason a claim `treated` vs `compared` was not tested, else None.

    `baseline` is the row's CE baseline (for an `improves` claim it is `compared` itself)."""
    for cell, name in ((baseline, "baseline"), (treated, names[0]), (compared, names[1])):
        why = not_trained(cell, name, chance, None if cell is baseline else baseline, th)
        if why:
            return why
    if regularisation:
        gap = fit_gap(baseline)
        if gap is not None and gap < th.min_fit_gap:
            return f"baseline does not over-fit: train - test = {gap:+.2f} < {th.min_fit_gap:g} points"
    return None


def stopped_by_teacher(treated: Cell, compared: Cell, baseline: Cell, controls: dict[str, Cell], *,
                       chance: float, name: str = "treated", th: Thresholds = DEFAULT) -> Optional[str]:
    """Why the treated run's failure to train is the teacher's doing, else None: the baseline
    and the compared run trained, the treated run did not, and every control (`controls`, both
    kinds) trained, each with a known train top-1 (a pending control has none). The controls keep the treated run's loss weights and drop the teacher, so
    the loss scaling alone trains; what starved the treated run is its teacher."""
    known = (baseline, compared, *controls.values())
    if not controls or any(c.train_top1_mean is None for c in known):
        return None  # a pending (or older, train-less) run cannot vouch that it trained
    if not_trained(baseline, "baseline", chance, None, th) or not_trained(compared, "compared", chance, baseline, th):
        return None
    why = not_trained(treated, name, chance, baseline, th)
    if why is None or any(not_trained(c, n, chance, baseline, th) for n, c in controls.items()):
        return None
    return f"{why}; both its controls trained, so the teacher stopped it"


def claim_verdict(kind: str, treated: Cell, compared: Cell, baseline: Cell, *, chance: float,
                  regularisation: bool, tolerance: float = 0.0, names: tuple[str, str] = ("treated", "baseline"),
                  controls: Optional[dict[str, Cell]] = None, th: Thresholds = DEFAULT) -> Verdict:
    """`improves`: treated mean > compared mean; `matches`: >= compared - tolerance; unless
    the claim was not tested (see `inconclusive_reason`). `controls` (name -> cell, both of
    the treated column's) turn a treated run that did not train into `no` when they trained
    (`stopped_by_teacher`); this comes before the fit-gap rule: a collapse is not a missed gain."""
    x, y = treated.mean, compared.mean
    if x is None or y is None:
        return Verdict("n/a")
    ok = x >= y - tolerance if kind == "matches" else x > y
    # a starved run that still "wins" on test is too odd to call: it stays inconclusive below
    stopped = None if ok else stopped_by_teacher(treated, compared, baseline, controls or {}, chance=chance,
                                                 name=names[0], th=th)
    if stopped:
        return Verdict("no", stopped)
    why = inconclusive_reason(treated, compared, baseline, chance=chance, regularisation=regularisation,
                              names=names, th=th)
    if why:
        return Verdict("inconclusive", why)
    return Verdict("yes" if ok else "no")


def two_se(a: Cell, b: Cell) -> Optional[float]:
    """2 x sqrt(std_a^2/n_a + std_b^2/n_b), as `report._noise`; None with fewer than 2 seeds."""
    na, nb = a.n or 0, b.n or 0
    if na < 2 or nb < 2:
        return None
    return 2 * math.sqrt(a.std ** 2 / na + b.std ** 2 / nb)


def beats_controls(treated: Cell, controls: dict[str, Cell], baseline: Cell, *, chance: float,
                   th: Thresholds = DEFAULT) -> Verdict:
    """Is the treated cell's gain attributable to the teacher (or the virtual teacher's shape)?

    yes: treated mean - control mean > 2 standard errors for EVERY control (`controls`: name ->
    cell, e.g. {"uniform teacher": ..., "ce x (1-a)": ...}); no: some control is within noise
    of it or above it; inconclusive: a control is missing, has one seed, or the treated run did
    not train. A control that did not train still counts: beating it is the teacher's doing."""
    if treated.mean is None:
        return Verdict("n/a")
    why = not_trained(baseline, "baseline", chance, None, th) or not_trained(treated, "treated", chance, baseline, th)
    if why:
        return Verdict("inconclusive", why)
    if not controls:
        return Verdict("inconclusive", "no controls")
    worst: Optional[str] = None
    for name, c in controls.items():
        if c.mean is None:
            return Verdict("inconclusive", f"control {name} not run")
        noise = two_se(treated, c)
        if noise is None:
            return Verdict("inconclusive", f"1 seed: the noise against {name} is unknown")
        margin = treated.mean - c.mean
        if margin <= noise:
            worst = worst or (f"{margin:+.2f} over {name}" + (", within noise" if margin > -noise else ""))
    return Verdict("no", worst) if worst else Verdict("yes")


# -- a table's claims -------------------------------------------------------------------

REGULARISERS = ("kd", "kd_self", "tfkd_reg", "lsr")


def baseline_cell(claim, cells: dict[str, Cell], claims: list) -> Cell:
    """The row's CE baseline of a claim: its compared cell if that is a ce run, else the ce
    cell another claim on the same treated column compares with (else any claim's)."""
    compared = cells[claim.baseline]
    if compared.method == "ce":
        return compared
    for same_column in (True, False):
        for other in claims:
            c = cells.get(other.baseline)
            if c is not None and c.method == "ce" and (other.column == claim.column or not same_column):
                return c
    return compared


def claim_verdicts(claim, cells: dict[str, Cell], claims: list, *, chance: float,
                   th: Thresholds = DEFAULT) -> tuple[Verdict, Optional[Verdict]]:
    """A table claim's verdict and, where its treated column has controls in the row, whether
    it beats them (`controls.add_controls`); `cells` are one row's result cells."""
    a, b = cells[claim.column], cells[claim.baseline]
    base = baseline_cell(claim, cells, claims)
    reg = claim.kind == "improves" and a.method in REGULARISERS and b.method == "ce"
    ctrl = controls_of(cells, claim.column)
    both = ctrl if len(ctrl) == len(KINDS) else None  # the rule needs both controls
    verdict = claim_verdict(claim.kind, a, b, base, chance=chance, regularisation=reg, tolerance=claim.tolerance,
                            names=(claim.column, claim.baseline), controls=both, th=th)
    return verdict, (beats_controls(a, ctrl, base, chance=chance, th=th) if ctrl else None)


def criteria(th: Thresholds = DEFAULT) -> str:
    """The verdicts' criteria in one line, for a table header (docs/verdicts.md)."""
    return (f"inconclusive: a compared run below {th.chance_multiple:g}x chance or {th.baseline_fraction:g}x "
            f"its baseline's train top-1, or a regularisation claim whose baseline over-fits by "
            f"< {th.min_fit_gap:g} points; no instead when only the treated run starved and both its controls "
            "trained; beats its controls: > 2 standard errors above the uniform-teacher "
            "run and ce x (1 - alpha) (docs/verdicts.md)")
