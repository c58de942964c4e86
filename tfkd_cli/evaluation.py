"""`tfkd evaluate`: metrics of a run's best and last checkpoints, or of one checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from tfkd_cli import fold, rundir
from tfkd_cli.data import build_data
from tfkd_cli.engine import select_device
from tfkd_cli.errors import TfkdError
from tfkd_cli.loading import load_model
from tfkd_cli.metrics import evaluate


def _run_recipe(run: Path) -> dict:
    p = run / rundir.RECIPE
    try:
        return yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TfkdError(f"cannot read {p}: {first}") from None


def evaluate_target(target: Path, *, model: Optional[str] = None, width: Optional[float] = None,
                    dataset: Optional[str] = None, data_root: Optional[str] = None,
                    device: str = "auto") -> list[dict]:
    """One row per checkpoint: checkpoint, model, epoch, top1, top5, nll, ece."""
    target = Path(target)
    if not target.exists():
        raise TfkdError(f"not found: {target} (expected a run directory or a checkpoint file)")
    run = target if target.is_dir() else target.parent
    recipe = _run_recipe(run) if (run / rundir.RECIPE).is_file() else {}
    data_cfg = recipe.get("data", {})
    name = dataset or data_cfg.get("dataset") or "cifar100"
    root = data_root or (data_cfg.get("root") if not dataset else None)
    dev = select_device(device)
    data = build_data(name, root, device=dev, per_class=None, augment=False, eval_batch_size=512)
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
    for label, f in files:
        loaded = load_model(f, model=model, width=width, num_classes=data.num_classes)
        net = fold.eval_model(loaded.model.to(dev), channels_last=dev.type == "cpu")  # as the engine evaluates
        rows.append({"checkpoint": label, "file": str(f), "model": loaded.name, "epoch": loaded.epoch,
                     **evaluate(net, data.test_batches())})
    return rows
