"""`tfkd evaluate`: metrics of a run's best and last checkpoints, or of one checkpoint file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from tfkd_cli import fold
from tfkd_cli.storage import rundir
from tfkd_cli.training.build import load_data
from tfkd_cli.diagnostics import COLUMNS as DIAGNOSTICS
from tfkd_cli.errors import TfkdError
from tfkd_cli.storage.loading import load_model
from tfkd_cli.metrics import evaluate
from tfkd_cli.config.recipe import Recipe, resolve
from tfkd_cli.training.runtime import select_device


def eval_recipe(run: Path, dataset: Optional[str] = None, data_root: Optional[str] = None) -> Recipe:
    """The recipe whose test split evaluates `run`: the run's own (recipe.yaml, validated), else
    the defaults; `dataset` replaces its dataset (and root, unless `data_root` is given)."""
    recipe = resolve(run / rundir.RECIPE) if (run / rundir.RECIPE).is_file() else Recipe()
    data = recipe.data
    if dataset:
        data = replace(data, dataset=dataset, root=data_root)
    elif data_root:
        data = replace(data, root=data_root)
    # The whole test split, as training measured it; no download, no training subset or augmentation.
    return replace(recipe, data=replace(data, download=False, per_class=None, augment=False))


def evaluate_target(target: Path, *, model: Optional[str] = None, width: Optional[float] = None,
                    dataset: Optional[str] = None, data_root: Optional[str] = None,
                    device: str = "auto") -> list[dict]:
    """One row per checkpoint: checkpoint, model, epoch, top1, top5, nll, ece."""
    target = Path(target)
    if not target.exists():
        raise TfkdError(f"not found: {target} (expected a run directory or a checkpoint file)")
    run = target if target.is_dir() else target.parent
    recipe = eval_recipe(run, dataset, data_root)
    dev = select_device(device)
    data = load_data(recipe, dev)
    if target.is_dir() and (target / rundir.RECIPE).is_file():
        files = [(label, target / f) for label, f in (("best", rundir.BEST), ("last", rundir.LAST))
                 if (target / f).is_file()]
        if not files:
            raise TfkdError(f"{target} has no checkpoint yet (best.pt / last.pt)")
    elif target.is_dir():
        files = [("best", target / "best.pth.tar")]
    else:
        files = [(target.name, target)]
    rows = []
    history = {r["epoch"]: r for r in rundir.read_metrics(run)} if target.is_dir() else {}
    for label, f in files:
        loaded = load_model(f, model=model, width=width, num_classes=data.num_classes)
        net = fold.eval_model(loaded.model.to(dev), channels_last=dev.type == "cpu")  # as the engine evaluates
        rows.append({"checkpoint": label, "file": str(f), "model": loaded.name, "epoch": loaded.epoch,
                     **evaluate(net, data.test_batches()), **_diagnostics(history.get(str(loaded.epoch)))})
    return rows


def _diagnostics(row: Optional[dict]) -> dict:
    """The training diagnostics of the checkpoint's epoch (metrics.csv; tfkd_cli.diagnostics), None if unknown."""
    return {k: float(row[k]) if row and row.get(k) not in (None, "") else None for k in DIAGNOSTICS}
