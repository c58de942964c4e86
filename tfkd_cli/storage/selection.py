"""Which epoch a run reports, from its per-epoch rows (metrics.csv).

- `best`: the epoch with the highest test top-1 (the official rule; the test set picks the epoch,
  ties go to the later epoch, as the official `>=` does). It is what the paper printed.
- `selected`: the epoch with the highest validation top-1 (`data.val_per_class` > 0), ties to
  the later epoch; its test numbers are the honest estimate, since the test set played no part.
  None without a validation split.
- `last`: the final epoch.
"""

from __future__ import annotations

from typing import Optional


def _argmax_later(rows: list[dict], key: str) -> Optional[dict]:
    """The row with the largest `key`; among equals the later one."""
    best = None
    for r in rows:
        if best is None or float(r[key]) >= float(best[key]):
            best = r
    return best


def test_view(row: Optional[dict]) -> Optional[dict]:
    if row is None:
        return None
    out = {"epoch": int(row["epoch"]), "top1": row["test_top1"], "top5": row["test_top5"],
           "nll": row["test_nll"], "ece": row["test_ece"], "train_top1": row["train_top1"]}
    if "val_top1" in row:
        out.update({"val_top1": row["val_top1"], "val_nll": row["val_nll"]})
    return out


def select_epochs(rows: list[dict]) -> dict:
    """{"best", "selected", "last"}: each the test metrics (top1, top5, nll, ece), train top-1 and,
    with a split, the val top-1/NLL of one epoch; None where there is no such epoch."""
    has_val = bool(rows) and "val_top1" in rows[0]
    return {"best": test_view(_argmax_later(rows, "test_top1")),
            "selected": test_view(_argmax_later(rows, "val_top1")) if has_val else None,
            "last": test_view(rows[-1] if rows else None)}
