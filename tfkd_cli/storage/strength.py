"""A poorly-trained (De-KD) teacher chosen by strength: the one rule, for training and tables.

The paper's pt-teachers reach a fraction of their fully trained accuracy: ResNet18 after 1
epoch 15.48 of 75.87 (0.20), ResNet50 and ResNeXt29 after 51 epochs 45.82 of 78.16 (0.59) and
51.94 of 81.03 (0.64). At a reduced scale a fixed epoch count says nothing about strength (a
scaled 1-epoch teacher sits at chance), so a teacher reference with `ratio` takes the epoch of
its finished teacher run whose test top-1, as a fraction of the run's final test top-1, is
nearest to that ratio (`pick_epoch`). Ties go to the earlier epoch.

The student loads that epoch (`build._load_teacher` via `choose`) and records the choice in
its summary.json["teacher"]["strength"]; a results table reads the same rows of the same
teacher run (or its record) with `choose`, so both name the same epoch.
"""

from __future__ import annotations

from pathlib import Path

from tfkd_cli.storage import rundir
from tfkd_cli.errors import TfkdError

METRIC = "test_top1"  # what strength is measured on (metrics.csv column)
RULE = "epoch whose test top-1 / final test top-1 is nearest the paper's ratio; ties: the earlier epoch"
_TIE = 9  # distances equal to this many decimals are ties (metrics.csv holds 4 decimals)


def check_ratio(ratio: float, where: str) -> None:
    """A ratio is a fraction of the final accuracy: in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise TfkdError(f"{where}: ratio must be a number in (0, 1] (a fraction of the teacher's final "
                        f"test top-1), got {ratio!r}")


def _top1(row: dict) -> float:
    try:
        return float(row[METRIC])
    except (KeyError, TypeError, ValueError):
        raise TfkdError(f"metrics row of epoch {row.get('epoch')} has no {METRIC}") from None


def pick_epoch(rows: list[dict], ratio: float) -> int:
    """The epoch whose test top-1 / the final epoch's test top-1 is nearest `ratio`.

    `rows`: a finished run's metrics.csv rows (values may be strings); the final epoch is the
    highest. Ties (equal distance to 9 decimals) go to the earlier epoch, the weaker teacher by
    the schedule. A final top-1 of 0 gives no fraction at all: that is an error, not a guess."""
    check_ratio(ratio, "pick_epoch")
    if not rows:
        raise TfkdError("the teacher run has no metrics rows; it has not trained an epoch")
    by_epoch = sorted(rows, key=lambda r: int(r["epoch"]))
    final = _top1(by_epoch[-1])
    if final <= 0:
        raise TfkdError(f"the teacher run's final {METRIC} is {final:g}: no epoch is a fraction of it "
                        "(the run did not train)")
    dist = [(round(abs(_top1(r) / final - ratio), _TIE), int(r["epoch"])) for r in by_epoch]
    return min(dist)[1]  # min over (distance, epoch): the earlier epoch on a tie


def choose(run: Path, ratio: float) -> dict:
    """The strength pick from a finished teacher run (or its record): what a summary records.

    {epoch, top1, final_epoch, final_top1, ratio (achieved), paper_ratio, metric, rule}."""
    run = Path(run)
    check_ratio(ratio, f"teacher {run}")
    if not (run / rundir.SUMMARY).is_file() or not (run / rundir.METRICS).is_file():
        raise TfkdError(f"teacher.ratio needs a tfkd run directory as the teacher (with {rundir.SUMMARY} "
                        f"and {rundir.METRICS}); {run} is not one")
    status = (rundir.read_summary(run) or {}).get("status")
    if status != "finished":
        raise TfkdError(f"the teacher run {run} has not finished (status {status}); a teacher picked by "
                        "ratio needs its final test top-1: finish that run first")
    rows = rundir.read_metrics(run)
    try:
        epoch = pick_epoch(rows, ratio)
    except TfkdError as e:
        raise TfkdError(f"teacher {run}: {e}") from None
    by_epoch = {int(r["epoch"]): _top1(r) for r in rows}
    final_epoch = max(by_epoch)
    top1, final = by_epoch[epoch], by_epoch[final_epoch]
    return {"epoch": epoch, "top1": top1, "final_epoch": final_epoch, "final_top1": final,
            "ratio": round(top1 / final, 4), "paper_ratio": ratio, "metric": METRIC, "rule": RULE}
