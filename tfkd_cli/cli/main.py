"""The `tfkd` command line: the group, the training commands, evaluate and models.

The commands over many runs (reproduce, sweep, compare, plot) live in cli/tables.py, the
options they share with these in cli/options.py.

Every training command resolves one recipe (defaults < dataset profile < --recipe file <
--set key=value < shortcut flags), then hands it to the engine. User errors print one line
(`tfkd: error: ...`) and exit 2; an interrupted run exits 130; a failed run (NaN) exits 3.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click

from tfkd_cli.cli import tables
from tfkd_cli.cli.options import flag_overrides, teacher_methods, training_options
from tfkd_cli.errors import Interrupted, RunFailed, TfkdError


class TfkdGroup(click.Group):
    """Turns user errors into one clear line and a non-zero exit, never a traceback."""

    def main(self, args: Any = None, prog_name: Optional[str] = None, **extra: Any) -> Any:
        # Click's own usage errors (bad option value, unknown option) print a Usage block;
        # ours is one line like every other user error.
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"tfkd: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("tfkd: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunFailed as e:
            click.echo(f"tfkd: run failed: {e}", err=True)
            ctx.exit(3)
        except TfkdError as e:
            click.echo(f"tfkd: error: {e}", err=True)
            ctx.exit(2)
        except Interrupted as e:
            click.echo(f"tfkd: {e}", err=True)
            ctx.exit(130)
        except KeyboardInterrupt:
            click.echo("tfkd: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=TfkdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tfkd")
def cli() -> None:
    """tfkd: reproduce Teacher-free Knowledge Distillation (Yuan et al., CVPR 2020).

    Train teachers and students, distill (normal KD, Re-KD, De-KD), self-train (Tf-KD_self),
    regularize with a virtual teacher (Tf-KD_reg) or label smoothing, evaluate, and
    reproduce whole paper tables beside the paper's numbers.
    """


# -- training: one recipe resolved, one run ------------------------------------------

def _run_training(kw: dict, forced: dict) -> None:
    from tfkd_cli.storage import rundir
    from tfkd_cli.training.engine import train
    from tfkd_cli.config.recipe import dump, merge, resolve_run

    saved = Path(kw["out"]) / rundir.RECIPE if kw.get("resume") and kw.get("out") else None
    if saved is not None and saved.is_file():  # `--resume --out DIR`, as an interrupted run says
        recipe = _resume_recipe(saved, kw, forced if kw.get("method") else {})
    else:
        recipe = resolve_run(kw.get("recipe_file"), kw.get("sets", ()), merge(flag_overrides(kw), forced))
    out = Path(kw["out"]) if kw.get("out") else Path("runs") / f"{recipe.model}_{recipe.method}_s{recipe.seed}"
    if kw.get("dry_run"):
        click.echo(dump(recipe), nl=False)
        return
    summary = train(recipe, out, resume=kw.get("resume", False), overwrite=kw.get("overwrite", False),
                    progress=not kw.get("quiet"), log=lambda m: click.echo(m, err=True))
    if summary:
        _print_result(out, summary)


# Fields a resumed run may change: how and where it runs, not what it computes.
_RESUME_FREE = ("runtime.", "data.root", "data.download", "data.workers", "name")


def _leaves(d: dict, prefix: str = "") -> list[str]:
    return [k for key, v in d.items()
            for k in (_leaves(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def _resume_recipe(saved: Path, kw: dict, forced: dict) -> Any:
    """The run's saved recipe; what the command line gives must agree with it (runtime aside)."""
    from tfkd_cli.storage import rundir
    from tfkd_cli.config.recipe import check_layer, from_dict, load_layers, merge, parse_set, Recipe
    from tfkd_cli.config.checks import _get

    base = from_dict(load_layers(saved), str(saved))
    layers = [(load_layers(Path(kw["recipe_file"])), kw["recipe_file"])] if kw.get("recipe_file") else []
    layers += [(parse_set(kw.get("sets", ())), "--set"), (merge(flag_overrides(kw), forced), "flags")]
    given: dict = {}
    for layer, src in layers:
        check_layer(Recipe, layer, src)
        given = merge(given, layer)
    recipe = from_dict(merge(base.to_dict(), given), "recipe")
    last = saved.parent / rundir.LAST
    for key in _leaves(given):
        if not key.startswith(_RESUME_FREE) and _get(recipe, key) != _get(base, key):
            what = (f"{last} was written by another recipe (hash {base.hash()} vs {recipe.hash()}): "
                    if last.exists() else "--resume: ")
            raise TfkdError(f"{what}{key} is {_get(base, key)!r} in {saved}, but this command gives "
                            f"{_get(recipe, key)!r}; resume with the saved recipe (leave {key} out) or start "
                            "a new run (--overwrite or another --out)")
    return recipe


def _print_result(out: Path, s: dict) -> None:
    b, l = s.get("best") or {}, s.get("last") or {}
    click.echo(f"{out}: {s['model']} {s['method']} seed {s['seed']} on {s['dataset']} - "
               f"best top-1 {b.get('top1', float('nan')):.2f}% (epoch {b.get('epoch')}), "
               + (f"val-selected top-1 {s['selected']['top1']:.2f}% (epoch {s['selected']['epoch']}), " if s.get("selected") else "")
               + f"last top-1 {l.get('top1', float('nan')):.2f}%, train top-1 {l.get('train_top1', float('nan')):.2f}%, "
               f"{s['train_time_s']:.1f}s, {s.get('images_per_s') or 0:.0f} img/s")


# -- commands ------------------------------------------------------------------------

@cli.command("train-teacher")
@training_options(method_default="ce")
def train_teacher(**kw: Any) -> None:
    """Train a model without a teacher: a baseline or teacher (ce), Tf-KD_reg (tfkd_reg) or label smoothing (lsr).

    \b
    Examples:
      tfkd train-teacher --dataset digits --out runs/digits_r18
      tfkd train-teacher --model resnet18 --dataset cifar100 --data-root DIR --out runs/r18
      tfkd train-teacher --model resnet18 --method tfkd_reg --set loss.alpha=0.1 --set loss.temperature=20 --set loss.multiplier=100
    """
    method = kw.get("method") or "ce"
    if method in teacher_methods(True):
        raise TfkdError(f"train-teacher trains without a teacher ({', '.join(teacher_methods(False))}); "
                        f"use `tfkd distill --method {method}`")
    _run_training(kw, {"method": method})


@cli.command()
@training_options(student_alias=True, method_default="kd")
def distill(**kw: Any) -> None:
    """Train a student from a teacher: normal KD, Re-KD (a weaker teacher), De-KD (--teacher-epoch).

    \b
    Examples:
      tfkd distill --student mobilenetv2 --teacher runs/r18 --out runs/mv2_kd
      tfkd distill --student mobilenetv2 --teacher runs/r18 --teacher-epoch 1 --out runs/mv2_dekd
      tfkd distill --student resnet18 --teacher release/base_resnet50 --teacher-model resnet50 --teacher-epoch 51
    """
    method = kw.get("method") or "kd"
    if method not in teacher_methods(True):
        raise TfkdError(f"distill uses a teacher ({' or '.join(teacher_methods(True))}); "
                        f"for {method} use `tfkd train-teacher --method {method}`")
    if not kw.get("teacher") and not kw.get("recipe_file"):
        raise TfkdError("distill needs --teacher (a run directory or a checkpoint)")
    _run_training(kw, {"method": method})


@cli.command("self-train")
@training_options(method_default="kd_self")
def self_train(**kw: Any) -> None:
    """Tf-KD_self: a model distills from a pre-trained copy of itself (--teacher: that run).

    \b
    Example:
      tfkd self-train --model resnet18 --teacher runs/r18 --out runs/r18_self \\
          --set loss.alpha=0.95 --set loss.temperature=6 --set loss.multiplier=50
    """
    if kw.get("method") not in (None, "kd_self"):
        raise TfkdError("self-train always uses method kd_self")
    if not kw.get("teacher") and not kw.get("recipe_file"):
        raise TfkdError("self-train needs --teacher: the run directory (or checkpoint) of the same model trained with ce")
    _run_training(kw, {"method": "kd_self"})


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--model", default=None, help="Architecture, for official .pth.tar checkpoints.")
@click.option("--width", type=float, default=None, help="Width of an official checkpoint's model.")
@click.option("--dataset", default=None, help="Dataset (default: the run's, else cifar100).")
@click.option("--data-root", default=None, help="Data folder (default: the run's, else $TFKD_DATA_ROOT or ./data).")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(target: str, model: Optional[str], width: Optional[float], dataset: Optional[str],
             data_root: Optional[str], device: str, as_json: bool) -> None:
    """Top-1, top-5, NLL and calibration (ECE, 15 bins) of a run's best and last checkpoints, or of one checkpoint."""
    from tfkd_cli.training.evaluation import evaluate_target

    rows = evaluate_target(Path(target), model=model, width=width, dataset=dataset, data_root=data_root,
                           device=device)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"evaluate {target}")
    for c in ("checkpoint", "model", "epoch", "top-1 %", "top-5 %", "NLL", "ECE %", "teacher share"):
        t.add_column(c, justify="right" if c not in ("checkpoint", "model") else "left")
    for r in rows:  # teacher share: of the logit gradient in that epoch's training (tfkd_cli.diagnostics)
        share = "-" if r.get("teacher_share") is None else f"{r['teacher_share']:.4f}"
        t.add_row(r["checkpoint"], r["model"], str(r.get("epoch") or "-"), f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                  f"{r['nll']:.4f}", f"{r['ece']:.2f}", share)
    Console().print(t)


@cli.command()
@click.option("--num-classes", type=int, default=100, show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True)
def models(num_classes: int, width: float) -> None:
    """List the CIFAR models with their parameter counts (official counts at width 1.0)."""
    from tfkd_cli.models import build_model, count_params, model_names

    for name in model_names():
        n = count_params(build_model(name, num_classes=num_classes, width=width))
        click.echo(f"{name:18s} {n:>12,d}")
    click.echo("plus any torchvision classification model as tv:<name> (e.g. tv:resnet18)")


@cli.command("run")
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(recipe_file: str, sets: tuple, out: str, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Train exactly the recipe in RECIPE_FILE (e.g. a run's saved recipe.yaml); no dataset profile is added."""
    from tfkd_cli.training.engine import train
    from tfkd_cli.config.recipe import resolve

    recipe = resolve(recipe_file, sets)
    summary = train(recipe, Path(out), resume=resume, overwrite=overwrite, progress=not quiet,
                    log=lambda m: click.echo(m, err=True))
    if summary:
        _print_result(Path(out), summary)


for _command in tables.COMMANDS:
    cli.add_command(_command)


def main() -> None:  # console script entry point
    cli(prog_name="tfkd")


if __name__ == "__main__":
    main()
