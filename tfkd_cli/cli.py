"""The `tfkd` command line.

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


# -- shared options -----------------------------------------------------------------

class RegistryHelp(click.Option):
    """An option whose help is built from a registry when shown (no torch import at start-up)."""

    def __init__(self, *args: Any, help_fn: Any = None, **kw: Any):
        super().__init__(*args, **kw)
        self.help_fn = help_fn

    def get_help_record(self, ctx: click.Context) -> Any:
        self.help = self.help_fn()
        return super().get_help_record(ctx)


def _methods_help(default: Optional[str]) -> str:
    from tfkd_cli.losses import METHODS

    return "Loss: " + ", ".join(METHODS) + (f" (default {default})." if default else ".")


def _datasets_help() -> str:
    from tfkd_cli.data.registry import DATASETS

    names = list(DATASETS)
    return ", ".join(names[:-1]) + f" or {names[-1]}."


def _teacher_methods(needs: bool) -> list[str]:
    from tfkd_cli.losses import METHODS

    return [n for n, m in METHODS.items() if m.needs_teacher == needs]


def training_options(student_alias: bool = False, method_default: Optional[str] = None):
    """The recipe shortcut flags every training command takes (names are stable API)."""
    model_flags = ["--model", "--student", "model"] if student_alias else ["--model", "model"]
    opts = [
        click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False), help="YAML recipe file (may use base:)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. --set optim.lr=0.05 (repeatable)."),
        click.option(*model_flags, default=None, help="Model name (see `tfkd models`), or tv:<torchvision name>."),
        click.option("--method", default=None, cls=RegistryHelp, help_fn=lambda: _methods_help(method_default)),
        click.option("--teacher", default=None, help="Teacher: a tfkd run directory, a release folder (base_<name>/) or a checkpoint file; "
                     "`uniform`: the uniform-teacher control (kd, kd_self, tfkd_reg)."),
        click.option("--teacher-epoch", type=int, default=None, help="Use the teacher's kept checkpoint after this many epochs (De-KD)."),
        click.option("--teacher-model", default=None, help="Teacher architecture, needed for official .pth.tar checkpoints."),
        click.option("--dataset", default=None, cls=RegistryHelp, help_fn=_datasets_help),
        click.option("--data-root", default=None, help="Data folder (default: $TFKD_DATA_ROOT or ./data)."),
        click.option("--download", is_flag=True, default=None, help="Download the dataset if missing (needs a network)."),
        click.option("--per-class", type=int, default=None, help="Train on a class-balanced subset of N images per class."),
        click.option("--val-per-class", type=int, default=None, help="Hold N training images per class out as a validation split (model selection)."),
        click.option("--epochs", type=int, default=None, help="Training epochs (official: 200)."),
        click.option("--batch-size", type=int, default=None, help="Batch size; lr scales as base_lr * batch/128."),
        click.option("--lr", type=float, default=None, help="Base learning rate at batch 128 (official: 0.1)."),
        click.option("--width", type=float, default=None, help="Channel width multiplier (1.0 = official model)."),
        click.option("--seed", type=int, default=None, help="Random seed."),
        click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N."),
        click.option("--amp", is_flag=True, default=None, help="bf16 autocast on CUDA."),
        click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model."),
        click.option("--channels-last", is_flag=True, default=None, help="channels_last memory format."),
        click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms (CUDA), no cudnn benchmark."),
        click.option("--checkpoint-every", type=int, default=None, help="Also checkpoint every N steps within an epoch."),
        click.option("--tensorboard", is_flag=True, default=None, help="Log to TensorBoard event files in <out>/tensorboard (the tb extra)."),
        click.option("--wandb", default=None, metavar="PROJECT", help="Log to this W&B project (the wandb extra; offline without an API key)."),
        click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory (default: runs/<model>_<method>_s<seed>)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
        click.option("--dry-run", is_flag=True, help="Print the resolved recipe and exit."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]

    def wrap(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return wrap


def _flag_overrides(kw: dict) -> dict:
    """Shortcut flags -> a nested recipe dict (only the flags given)."""
    mapping = {
        "model": "model", "method": "method", "teacher": "teacher.path", "teacher_epoch": "teacher.epoch",
        "teacher_model": "teacher.model", "dataset": "data.dataset", "data_root": "data.root",
        "download": "data.download", "per_class": "data.per_class", "val_per_class": "data.val_per_class",
        "epochs": "train.epochs",
        "batch_size": "train.batch_size", "lr": "optim.lr", "width": "width", "seed": "seed",
        "device": "runtime.device", "amp": "runtime.amp", "compile_": "runtime.compile",
        "channels_last": "runtime.channels_last", "deterministic": "runtime.deterministic",
        "checkpoint_every": "train.checkpoint_every", "tensorboard": "runtime.tensorboard", "wandb": "runtime.wandb",
    }
    out: dict = {}
    for flag, key in mapping.items():
        value = kw.get(flag)
        if value is None:
            continue
        if flag == "teacher" and value == "uniform":  # the uniform-teacher control (./uniform for a folder so named)
            key, value = "teacher.uniform", True
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _run_training(kw: dict, forced: dict) -> None:
    from tfkd_cli.engine import train
    from tfkd_cli.recipe import dump, merge, resolve_run

    overrides = merge(_flag_overrides(kw), forced)
    recipe = resolve_run(kw.get("recipe_file"), kw.get("sets", ()), overrides)
    out = Path(kw["out"]) if kw.get("out") else Path("runs") / f"{recipe.model}_{recipe.method}_s{recipe.seed}"
    if kw.get("dry_run"):
        click.echo(dump(recipe), nl=False)
        return
    summary = train(recipe, out, resume=kw.get("resume", False), overwrite=kw.get("overwrite", False),
                    progress=not kw.get("quiet"), log=lambda m: click.echo(m, err=True))
    if summary:
        _print_result(out, summary)


def _print_result(out: Path, s: dict) -> None:
    b, l = s.get("best") or {}, s.get("last") or {}
    click.echo(f"{out}: {s['model']} {s['method']} seed {s['seed']} on {s['dataset']} - "
               f"best top-1 {b.get('top1', float('nan')):.2f}% (epoch {b.get('epoch')}), "
               + (f"val-selected top-1 {s['selected']['top1']:.2f}% (epoch {s['selected']['epoch']}), " if s.get("selected") else "")
               + f"last top-1 {l.get('top1', float('nan')):.2f}%, train top-1 {l.get('train_top1', float('nan')):.2f}%, "
               f"{s['train_time_s']:.1f}s, {s.get('images_per_s') or 0:.0f} img/s")


# -- where reproduce places its runs (--executor, --slurm-*, --status) ------------------

def executor_options(f):
    """The reproduce options of the executors; their values reach `executor_args` as **kw."""
    opts = [
        click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
                     help="local: this machine (--jobs, --devices); slurm: one Slurm job per run (submitit)."),
        click.option("--status", is_flag=True, help="Print every run's state (pending, queued, running, finished, failed); start nothing."),
        click.option("--cluster", "cluster_file", default=None, type=click.Path(dir_okay=False),
                     help="YAML with defaults for the --slurm-* options (partition: gpu, time: 720, setup: [...])."),
        click.option("--slurm-partition", default=None, help="Slurm partition."),
        click.option("--slurm-account", default=None, help="Slurm account."),
        click.option("--slurm-qos", default=None, help="Slurm QOS."),
        click.option("--slurm-time", type=int, default=None, help="Time limit per job in minutes (default 1440); longer runs are requeued and resume."),
        click.option("--slurm-gpus-per-run", type=int, default=None, help="GPUs per run; more than one trains under DDP (global batch kept)."),
        click.option("--slurm-cpus-per-run", type=int, default=None, help="CPUs per run (default 4); also its torch threads."),
        click.option("--slurm-tasks-per-run", type=int, default=None, help="DDP ranks per run (default: one per GPU, else 1)."),
        click.option("--slurm-mem", default=None, help="Memory per job, e.g. 32G."),
        click.option("--slurm-max-parallel", type=int, default=None, help="Jobs queued or running at once (default: no limit)."),
        click.option("--slurm-setup", multiple=True, help="Shell line run before each job, e.g. 'module load cuda' (repeatable)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def executor_args(kw: dict) -> dict:
    """--executor/--slurm-*/--cluster/--status values -> api.reproduce keyword arguments."""
    out = {"executor": kw.pop("executor"), "status": kw.pop("status")}
    cluster_file = kw.pop("cluster_file")
    flags = {k[len("slurm_"):]: kw.pop(k) for k in list(kw) if k.startswith("slurm_")}
    if out["executor"] == "slurm":
        from tfkd_cli.reproduce.slurm import load_options

        out["executor_options"] = load_options(cluster_file, flags)
    elif cluster_file or any(v not in (None, ()) for v in flags.values()):
        raise TfkdError("--cluster and --slurm-* options need --executor slurm")
    return out


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
    if method in _teacher_methods(True):
        raise TfkdError(f"train-teacher trains without a teacher ({', '.join(_teacher_methods(False))}); "
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
    if method not in _teacher_methods(True):
        raise TfkdError(f"distill uses a teacher ({' or '.join(_teacher_methods(True))}); "
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
    from tfkd_cli.evaluation import evaluate_target

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
    from tfkd_cli.engine import train
    from tfkd_cli.recipe import resolve

    recipe = resolve(recipe_file, sets)
    summary = train(recipe, Path(out), resume=resume, overwrite=overwrite, progress=not quiet,
                    log=lambda m: click.echo(m, err=True))
    if summary:
        _print_result(Path(out), summary)


@cli.command()
@click.argument("table", required=False)
@click.option("--scale", default="paper", show_default=True, help="paper, mini, smoke (recipes/scales/) or a scale overlay FILE.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field of every run, after the scale (repeatable).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Run seeds 0..N-1 of every run.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Results folder (default results/<table>/<scale>).")
@click.option("--runs-dir", default="runs/reproduce", show_default=True, type=click.Path(file_okay=False),
              help="Where run directories live (content-addressed, shared between tables).")
@click.option("--teachers", default=None, type=click.Path(file_okay=False),
              help="Folder of the authors' released teachers (base_<name>/best.pth.tar, 0.pth.tar, 50.pth.tar): train only the students.")
@click.option("--only", multiple=True, help="Run only these run ids (and what they need).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Independent runs at once.")
@click.option("--devices", default=None, help="Comma-separated devices for --jobs, e.g. cuda:0,cuda:1.")
@click.option("--dry-run", is_flag=True, help="Print the plan: every run, its dependencies and estimated cost.")
@click.option("--report-only", is_flag=True, help="Write the results table from finished runs; train nothing.")
@click.option("--retry-failed", is_flag=True, help="Run failed runs again.")
@click.option("--no-controls", is_flag=True, help="Skip the control runs (uniform teacher, ce x (1 - alpha)) of the cells with a teacher.")
@click.option("--list", "list_", is_flag=True, help="List the tables and their status.")
@executor_options
def reproduce(table: Optional[str], scale: str, sets: tuple, seeds: int, out: Optional[str], runs_dir: str,
              teachers: Optional[str], only: tuple, jobs: int, devices: Optional[str], dry_run: bool,
              report_only: bool, retry_failed: bool, no_controls: bool, list_: bool, **placement: Any) -> None:
    """Reproduce a paper table: plan its runs, train them in dependency order, write the table.

    \b
    Examples:
      tfkd reproduce --list
      tfkd reproduce table3 --scale smoke             # about 1.5 min on 2 cores, no download
      tfkd reproduce table3 --scale mini --seeds 2 --jobs 2   # tiny100-32, ~35 min on 2 cores
      tfkd reproduce table3 --teachers pretrained_teacher_models/   # authors' teachers
      tfkd reproduce tfkd-reg-cifar100 --scale my_scale.yaml --set data.dataset=cifar10 --set data.root=DIR
      tfkd reproduce table3 --executor slurm --cluster cluster.yaml   # one Slurm job per run
      tfkd reproduce table3 --executor slurm --status
    """
    from tfkd_cli.reproduce import api

    if list_:
        click.echo(api.list_tables())
        return
    if not table:
        raise TfkdError("name a table (tfkd reproduce --list shows them)")
    if seeds < 1:
        raise TfkdError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise TfkdError(f"--jobs must be >= 1, got {jobs}")
    api.reproduce(table, scale=scale, seeds=seeds, out=out, runs_dir=runs_dir, teachers=teachers,
                  only=set(only) or None, jobs=jobs, devices=devices.split(",") if devices else None,
                  dry_run=dry_run, report_only=report_only, retry_failed=retry_failed, sets=sets,
                  controls=not no_controls,
                  log=lambda m: click.echo(m, err=True), echo=click.echo, **executor_args(placement))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["rich", "md", "csv", "json"]), default="rich", show_default=True)
@click.option("--tolerance", type=float, default=2.0, show_default=True,
              help="Highlight cells whose |ours - paper| (or |A - B|) exceeds this many points.")
@click.option("--fail-on-claims", is_flag=True, help="Exit 1 when a claim does not hold (verdict no; inconclusive does not fail) (for CI).")
@click.option("--plot", "plot_file", default=None, type=click.Path(dir_okay=False),
              help="Also draw the compared runs' curves into this PNG (run directories only).")
def compare(paths: tuple, fmt: str, tolerance: float, fail_on_claims: bool, plot_file: Optional[str]) -> None:
    """Compare results: one results folder against the paper, two results folders row by row, or run directories side by side.

    \b
    Examples:
      tfkd compare results/table3/mini
      tfkd compare results/table3/smoke results/table3/mini --format md
      tfkd compare runs/r18 runs/mv2_kd --plot curves.png
    """
    from tfkd_cli.reproduce import compare as cmp

    if plot_file and any((Path(p) / "table.json").is_file() for p in paths):
        raise TfkdError("--plot draws run directories; a results folder has its curves in curves.png")
    failed = cmp.compare(list(paths), fmt=fmt, tolerance=tolerance, echo=click.echo)
    if plot_file:
        _plot(list(paths), plot_file, None)
    if fail_on_claims and failed:  # only "no" fails; inconclusive and n/a are counted apart
        counts = cmp.claim_counts(list(paths))
        click.echo(f"tfkd: {failed} claim(s) do not hold" + (f" ({counts})" if counts else ""), err=True)
        sys.exit(1)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--metric", "metrics", default=None, metavar="M,...",
              help="Columns of metrics.csv to draw (default: test/train top-1, train loss, lr, "
                   "and teacher_share, val_top1 where present).")
@click.option("--out", default="curves.png", show_default=True, type=click.Path(dir_okay=False), help="PNG file to write.")
def plot(runs: tuple, metrics: Optional[str], out: str) -> None:
    """Per-epoch curves of runs on shared axes, one panel per metric (RUNS: run directories, or folders of them).

    \b
    Examples:
      tfkd plot runs/r18 runs/mv2_kd --out curves.png
      tfkd plot runs/ --metric test_top1,test_ece
    """
    _plot(list(runs), out, [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None)


def _plot(runs: list[str], out: str, metrics: Optional[list[str]]) -> None:
    from tfkd_cli.plots import plot_runs

    drawn = plot_runs([Path(r) for r in runs], Path(out), metrics, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {out} ({', '.join(drawn)})")


# -- sweep (self-contained: grid, plan and report live in tfkd_cli/reproduce/sweep*.py) ------

@cli.command()
@training_options()
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="A recipe field and its values, e.g. --grid loss.alpha=0.1,0.5,0.9 (repeatable: one axis each).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per point: --seed, --seed+1, ...")
@click.option("--name", default=None, help="Sweep name (default <dataset>_<model>_<method>_<fields>); output in sweeps/<name>/.")
@click.option("--runs-dir", default="runs/reproduce", show_default=True, type=click.Path(file_okay=False),
              help="Where run directories live (content-addressed, shared with reproduce).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Independent runs at once.")
@click.option("--devices", default=None, help="Comma-separated devices for --jobs, e.g. cuda:0,cuda:1.")
@click.option("--report-only", is_flag=True, help="Write the sweep table from finished runs; train nothing.")
@click.option("--retry-failed", is_flag=True, help="Run failed runs again.")
def sweep(**kw: Any) -> None:
    """Grid search over recipe fields, chosen on a validation split (the test set never chooses).

    Finished points are skipped and interrupted ones resumed; --out is the sweep folder
    (default sweeps/<name>/), which gets sweep.md, .csv, .json and .png.

    \b
    Example:
      tfkd sweep --dataset digits --method tfkd_reg --epochs 3 --val-per-class 20 \\
          --grid loss.alpha=0.1,0.9 --grid loss.temperature=4,20
    """
    from tfkd_cli.recipe import resolve_run
    from tfkd_cli.reproduce.sweep import sweep as run_sweep

    if kw.get("overwrite"):
        raise TfkdError("sweep never replaces runs (--overwrite); finished points are reused, "
                        "use --retry-failed for failed ones or another --runs-dir")
    base = resolve_run(kw.get("recipe_file"), kw.get("sets", ()), _flag_overrides(kw))
    run_sweep(base, kw["grid"], seeds=kw["seeds"], name=kw["name"], out=kw.get("out"), runs_dir=kw["runs_dir"],
              jobs=kw["jobs"], devices=kw["devices"].split(",") if kw.get("devices") else None,
              dry_run=kw.get("dry_run", False), report_only=kw["report_only"], retry_failed=kw["retry_failed"],
              log=lambda m: click.echo(m, err=True), echo=click.echo)


def main() -> None:  # console script entry point
    cli(prog_name="tfkd")


if __name__ == "__main__":
    main()
