"""The `tfkd` commands over many runs: reproduce a paper table, sweep a grid, compare results, plot curves."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import click

from tfkd_cli.cli.options import executor_args, executor_options, flag_overrides, runner_options, training_options
from tfkd_cli.errors import TfkdError


@click.command()
@click.argument("table", required=False)
@click.option("--scale", default="paper", show_default=True, help="paper, mini, smoke (recipes/scales/) or a scale overlay FILE.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe field of every run, after the scale (repeatable).")
@click.option("--seeds", default=None, metavar="LIST",
              help="Seeds to run: a list or range, e.g. 0,1 or 0-2 (default 0). The table also reports every "
                   "seed already recorded in its results folder, so a table can be built in slices.")
@click.option("--rerun", is_flag=True,
              help="Train every run again, ignoring finished records; write to runs/rerun/<table>/<scale> "
                   "(or --out) and list the cells that differ from the committed table.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Results folder (default results/<table>/<scale>).")
@runner_options
@click.option("--teachers", default=None, type=click.Path(file_okay=False),
              help="Folder of the authors' released teachers (base_<name>/best.pth.tar, 0.pth.tar, 50.pth.tar): train only the students.")
@click.option("--only", multiple=True,
              help="Run only these run ids (and what they need); repeatable or comma-separated.")
@click.option("--dry-run", is_flag=True, help="Print the plan: every run, its dependencies and estimated cost.")
@click.option("--measure", is_flag=True,
              help="With --dry-run on the CPU: train each configuration here for a few seconds and scale "
                   "the estimates by this machine's speed against the run records' machines.")
@click.option("--no-controls", is_flag=True, help="Skip the control runs (uniform teacher, ce x (1 - alpha)) of the cells with a teacher.")
@click.option("--list", "list_", is_flag=True, help="List the tables and their status.")
@executor_options
def reproduce(table: Optional[str], scale: str, sets: tuple, seeds: Optional[str], rerun: bool, out: Optional[str],
              runs_dir: str, teachers: Optional[str], only: tuple, jobs: Optional[int], devices: Optional[str], dry_run: bool,
              measure: bool, report_only: bool, retry_failed: bool, no_controls: bool, list_: bool, **placement: Any) -> None:
    """Reproduce a paper table: plan its runs, train them in dependency order, write the table.

    \b
    Examples:
      tfkd reproduce --list
      tfkd reproduce table3 --scale smoke --rerun     # train the 23 runs again, compare with the committed table
      tfkd reproduce table3 --scale mini --seeds 0,1        # tiny100-32; --seeds 2 later, on any machine
      tfkd reproduce table3 --teachers pretrained_teacher_models/   # authors' teachers
      tfkd reproduce tfkd-reg-cifar100 --scale my_scale.yaml --set data.dataset=cifar10 --set data.root=DIR
      tfkd reproduce table3 --executor slurm --cluster cluster.yaml   # one Slurm job per run
      tfkd reproduce table3 --executor slurm --status
    """
    from tfkd_cli.execution import reproduce as api

    if list_:
        click.echo(api.list_tables())
        return
    if not table:
        raise TfkdError("name a table (tfkd reproduce --list shows them)")
    if jobs is not None and jobs < 1:
        raise TfkdError(f"--jobs must be >= 1, got {jobs}")
    if measure and not dry_run:
        raise TfkdError("--measure times this machine for a --dry-run estimate; add --dry-run")
    api.reproduce(table, scale=scale, seeds=parse_seeds(seeds) if seeds is not None else None, out=out,
                  runs_dir=runs_dir, teachers=teachers,
                  only={i for o in only for i in o.split(",") if i} or None, jobs=jobs, devices=devices.split(",") if devices else None,
                  dry_run=dry_run, measure=measure, report_only=report_only, retry_failed=retry_failed, sets=sets,
                  controls=not no_controls, rerun=rerun, command=shlex.join(["tfkd", *sys.argv[1:]]),
                  log=lambda m: click.echo(m, err=True), echo=click.echo, **executor_args(placement))


def parse_seeds(text: str) -> list[int]:
    """`0,1`, `2` or `0-2` (ranges inclusive, mixable: `0-2,5`) to a sorted list of seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b if sep else a)
        except ValueError:
            raise TfkdError(f"--seeds {text!r}: expected seeds as a list or range of integers >= 0, "
                            "e.g. 0,1 or 0-2") from None
        if lo > hi:
            raise TfkdError(f"--seeds {text!r}: range {part.strip()} runs backwards; write {hi}-{lo}")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


@click.command()
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
    from tfkd_cli.tables import compare as cmp

    if plot_file and any((Path(p) / "table.json").is_file() for p in paths):
        raise TfkdError("--plot draws run directories; a results folder has its curves in curves.png")
    failed = cmp.compare(list(paths), fmt=fmt, tolerance=tolerance, echo=click.echo)
    if plot_file:
        _plot(list(paths), plot_file, None)
    if fail_on_claims and failed:  # only "no" fails; inconclusive and n/a are counted apart
        counts = cmp.claim_counts(list(paths))
        click.echo(f"tfkd: {failed} claim(s) do not hold" + (f" ({counts})" if counts else ""), err=True)
        sys.exit(1)


@click.command()
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
    from tfkd_cli.tables.figures import plot_runs

    drawn = plot_runs([Path(r) for r in runs], Path(out), metrics, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {out} ({', '.join(drawn)})")


# -- sweep (self-contained: grid, plan and report live in tfkd_cli/sweep/) ----------------------

@click.command()
@training_options()
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="A recipe field and its values, e.g. --grid loss.alpha=0.1,0.5,0.9 (repeatable: one axis each).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per point: --seed, --seed+1, ...")
@runner_options
@click.option("--name", default=None, help="Sweep name (default <dataset>_<model>_<method>_<fields>); output in sweeps/<name>/.")
def sweep(**kw: Any) -> None:
    """Grid search over recipe fields, chosen on a validation split (the test set never chooses).

    Finished points are skipped and interrupted ones resumed; --out is the sweep folder
    (default sweeps/<name>/), which gets sweep.md, .csv, .json and .png.

    \b
    Example:
      tfkd sweep --dataset digits --method tfkd_reg --epochs 3 --val-per-class 20 \\
          --grid loss.alpha=0.1,0.9 --grid loss.temperature=4,20
    """
    from tfkd_cli.config.recipe import resolve_run
    from tfkd_cli.sweep.run import sweep as run_sweep

    if kw.get("overwrite"):
        raise TfkdError("sweep never replaces runs (--overwrite); finished points are reused, "
                        "use --retry-failed for failed ones or another --runs-dir")
    base = resolve_run(kw.get("recipe_file"), kw.get("sets", ()), flag_overrides(kw))
    run_sweep(base, kw["grid"], seeds=kw["seeds"], name=kw["name"], out=kw.get("out"), runs_dir=kw["runs_dir"],
              jobs=kw["jobs"], devices=kw["devices"].split(",") if kw.get("devices") else None,
              dry_run=kw.get("dry_run", False), report_only=kw["report_only"], retry_failed=kw["retry_failed"],
              log=lambda m: click.echo(m, err=True), echo=click.echo)


COMMANDS = (reproduce, compare, plot, sweep)
