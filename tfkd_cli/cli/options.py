"""The options that several `tfkd` commands share: the recipe shortcut flags and the executor flags."""

from __future__ import annotations

from typing import Any, Optional

import click

from tfkd_cli.errors import TfkdError


class RegistryHelp(click.Option):
    """An option whose help is built from a registry when shown (no torch import at start-up)."""

    def __init__(self, *args: Any, help_fn: Any = None, **kw: Any):
        super().__init__(*args, **kw)
        self.help_fn = help_fn

    def get_help_record(self, ctx: click.Context) -> Any:
        self.help = self.help_fn()
        return super().get_help_record(ctx)


def _methods_help(default: Optional[str]) -> str:
    from tfkd_cli.methods import METHODS

    return "Loss: " + ", ".join(METHODS) + (f" (default {default})." if default else ".")


def _datasets_help() -> str:
    from tfkd_cli.data.registry import DATASETS

    names = list(DATASETS)
    return ", ".join(names[:-1]) + f" or {names[-1]}."


def _stacked(opts: list, f):
    """`f` decorated with every option of `opts`, listed in --help in that order."""
    for o in reversed(opts):
        f = o(f)
    return f


def teacher_methods(needs: bool) -> list[str]:
    from tfkd_cli.methods import METHODS

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
        click.option("--teacher-other-dataset", is_flag=True, default=None,
                     help="Accept a teacher trained on another dataset than this run's (refused otherwise)."),
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

    return lambda f: _stacked(opts, f)


def flag_overrides(kw: dict) -> dict:
    """Shortcut flags -> a nested recipe dict (only the flags given)."""
    mapping = {
        "model": "model", "method": "method", "teacher": "teacher.path", "teacher_epoch": "teacher.epoch",
        "teacher_model": "teacher.model", "teacher_other_dataset": "teacher.other_dataset", "dataset": "data.dataset", "data_root": "data.root",
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
    return _stacked(opts, f)


def executor_args(kw: dict) -> dict:
    """--executor/--slurm-*/--cluster/--status values -> keyword arguments of execution.reproduce.reproduce."""
    out = {"executor": kw.pop("executor"), "status": kw.pop("status")}
    cluster_file = kw.pop("cluster_file")
    flags = {k[len("slurm_"):]: kw.pop(k) for k in list(kw) if k.startswith("slurm_")}
    if out["executor"] == "slurm":
        from tfkd_cli.execution.slurm import load_options

        out["executor_options"] = load_options(cluster_file, flags)
    elif cluster_file or any(v not in (None, ()) for v in flags.values()):
        raise TfkdError("--cluster and --slurm-* options need --executor slurm")
    return out


def runner_options(f):
    """The options of the commands that train many content-addressed runs (reproduce, sweep)."""
    opts = [
        click.option("--runs-dir", default="runs/reproduce", show_default=True, type=click.Path(file_okay=False),
                     help="Where run directories live (content-addressed, shared by reproduce and sweep)."),
        click.option("--jobs", type=int, default=None,
                     help="Independent runs at once (default: on the CPU one per core, one thread each; "
                          "one per --devices entry; 1 on a GPU)."),
        click.option("--devices", default=None, help="Comma-separated devices for --jobs, e.g. cuda:0,cuda:1."),
        click.option("--report-only", is_flag=True, help="Write the table from finished runs; train nothing."),
        click.option("--retry-failed", is_flag=True, help="Run failed runs again."),
    ]
    return _stacked(opts, f)
