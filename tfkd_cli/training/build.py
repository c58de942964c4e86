"""What a run trains with, built from its recipe: data, teacher, student, optimizer and loss.

`build_run` is the one way to build them: the engine, the throughput benchmark and (for the
data) `tfkd evaluate` all call it, so what the benchmark times is what the engine runs. The
order is part of the numbers: the teacher is built (and evaluated) before the global RNGs are
seeded, and the student is initialised right after seeding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from tfkd_cli import fold
from tfkd_cli.storage import strength
from tfkd_cli.data import DataSpec, build_data
from tfkd_cli.data.loaders import Data
from tfkd_cli.diagnostics import term_norms
from tfkd_cli.errors import TfkdError
from tfkd_cli.storage.loading import Loaded, load_model
from tfkd_cli.methods import NEEDS_TEACHER, build_loss
from tfkd_cli.metrics import evaluate
from tfkd_cli.models import build_model, canonical_name
from tfkd_cli.config.recipe import Recipe
from tfkd_cli.training.channels_last import MIN_STRIDED_1X1_CHANNELS, cpu_unsafe_convs
from tfkd_cli.training.runtime import Dist, autocast_for, configure_torch, seed_everything
from tfkd_cli.storage.teacher_cache import TeacherCache


@dataclass
class Run:
    """A run's parts, on its device; `model` is the plain student (see runtime.wrap for DDP/compile)."""

    data: Data
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    teacher: Optional[nn.Module]  # frozen, eval mode; None for methods without a teacher
    teacher_info: Optional[dict]  # provenance (source, file, sha256, ...), "test" metrics if evaluated
    cache: Optional[TeacherCache]  # the teacher's logits shared between students, if enabled
    arch: dict  # {model, num_classes, width}: what a checkpoint needs to rebuild the student
    autocast: Optional[Callable]
    channels_last: bool
    # diagnose(logits, labels, teacher_logits) -> tensor([g_label, g_teacher]) of one batch (tfkd_cli.diagnostics)
    diagnose: Optional[Callable] = None


def build_run(recipe: Recipe, device: torch.device, dd: Dist = Dist(), *, log: Callable[[str], None] = print,
              cache_root: Optional[Path] = None, teacher_sha: Optional[str] = None,
              eval_teacher: bool = False) -> Run:
    """Set torch's flags for `recipe` and build its parts.

    `cache_root`: where the teacher-logit cache lives (None: no cache). `teacher_sha`: the sha256
    of the teacher a resumed run started with; another file is refused. `eval_teacher`: measure
    the teacher on the test split (into teacher_info["test"]) and log it.
    """
    configure_torch(recipe.runtime, device)
    channels_last = recipe.runtime.channels_last and not _cl_crashes(recipe, device, log if dd.main else None)
    # train.batch_size is the global batch (the lr is scaled from it, as officially); with
    # torchrun each of the N processes takes batch_size / N of it.
    if recipe.train.batch_size % dd.world:
        raise TfkdError(f"train.batch_size {recipe.train.batch_size} is not divisible by the "
                        f"{dd.world} processes; choose a multiple of {dd.world}")
    data = load_data(recipe, device, dd, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    autocast = autocast_for(recipe.runtime, device)

    # Teacher first: a bad teacher path should fail before any file is written.
    teacher = loaded = info = None
    if recipe.method in NEEDS_TEACHER and not recipe.teacher.uniform:  # a uniform teacher is no network
        loaded, pick = _load_teacher(recipe, data, log)
        teacher = loaded.model.to(device, memory_format=fmt).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        info = loaded.provenance()
        if pick is not None:
            info["strength"] = pick  # which epoch the ratio chose, and why (tfkd_cli.storage.strength)
            if dd.main:
                log(f"teacher by strength: epoch {pick['epoch']} of {pick['final_epoch']}, test top-1 "
                    f"{pick['top1']:.2f} of {pick['final_top1']:.2f} = {pick['ratio']:.2f} "
                    f"(paper's ratio {pick['paper_ratio']:g})")
        if teacher_sha and teacher_sha != info["sha256"]:
            raise TfkdError(f"the teacher {loaded.file} changed since this run started (sha256 "
                            f"{info['sha256'][:12]} vs {teacher_sha[:12]}); resume with the same teacher, or --overwrite")
        if eval_teacher:
            rt = recipe.runtime  # the teacher is evaluated as the students are (tfkd_cli.fold)
            eval_copy = fold.eval_model(teacher, fold=rt.fast_eval,
                                        channels_last=rt.fast_eval and (channels_last or device.type == "cpu"))
            info["test"] = evaluate(eval_copy, data.test_batches(), autocast)
            log(f"teacher {loaded.name} ({loaded.source}, {loaded.file.name}): "
                f"test top-1 {info['test']['top1']:.2f}%")
    cache = None
    if loaded is not None and recipe.runtime.teacher_cache and cache_root is not None:
        cache = _teacher_cache(recipe, loaded, info, cache_root, dd, device, channels_last)

    seed_everything(recipe.seed)
    model = build_model(recipe.model, num_classes=data.num_classes, width=recipe.width)
    model = model.to(device, memory_format=fmt)
    arch = {"model": canonical_name(recipe.model), "num_classes": data.num_classes, "width": recipe.width,
            "dataset": recipe.data.dataset}  # a student refuses a teacher of another dataset (_load_teacher)
    o = recipe.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=o.momentum,
                                weight_decay=o.weight_decay, nesterov=o.nesterov, foreach=True)
    params = dict(uniform_teacher=recipe.teacher.uniform, **loss_params(recipe))
    loss_fn = build_loss(recipe.method, **params)
    diagnose = functools.partial(term_norms, recipe.method, **params)  # the same terms as the loss
    return Run(data, model, optimizer, loss_fn, teacher, info, cache, arch, autocast, channels_last, diagnose)


def _cl_crashes(recipe: Recipe, device: torch.device, log: Optional[Callable[[str], None]]) -> bool:
    """True when the model holds a convolution whose channels_last CPU backward crashes torch
    (tfkd_cli.training.channels_last.cpu_unsafe_convs). The probe is built on the meta device: no
    memory, and the RNG the real model is initialised from is untouched."""
    if device.type != "cpu":
        return False
    with torch.device("meta"):
        probe = build_model(recipe.model, num_classes=10, width=recipe.width)
    bad = cpu_unsafe_convs(probe)
    if bad and log:
        log(f"channels_last off for this run: torch's CPU backward crashes on a strided 1x1 convolution "
            f"with fewer than {MIN_STRIDED_1X1_CHANNELS} input channels ({bad[0]}: "
            f"{probe.get_submodule(bad[0]).in_channels}); the default memory format is used")
    return bool(bad)


def load_data(recipe: Recipe, device: torch.device, dd: Dist = Dist(), channels_last: bool = False) -> Data:
    """The recipe's dataset, this rank's share of each training batch (the one build_data call)."""
    return build_data(DataSpec.of(recipe.data, device=device, batch_size=recipe.train.batch_size // dd.world,
                                  eval_batch_size=recipe.train.eval_batch_size, rank=dd.rank, world_size=dd.world,
                                  channels_last=channels_last))


def loss_params(recipe: Recipe) -> dict:
    return recipe.loss_params()  # the parameters the method reads (tfkd_cli.methods.METHODS)


def _load_teacher(recipe: Recipe, data: Data, log: Callable[[str], None]) -> tuple[Loaded, Optional[dict]]:
    """The teacher, and the strength pick when `teacher.ratio` chose its epoch (else None)."""
    t = recipe.teacher
    epoch, pick = t.epoch, None
    if t.ratio is not None:  # the same finished metrics.csv gives the same epoch on every resume
        pick = strength.choose(Path(t.path), t.ratio)
        epoch = pick["epoch"]
    loaded = load_model(Path(t.path), model=t.model, width=t.width, num_classes=data.num_classes, epoch=epoch)
    if loaded.dataset not in (None, recipe.data.dataset) and not t.other_dataset:
        raise TfkdError(f"the teacher {loaded.file} was trained on {loaded.dataset}, this run trains on "
                        f"{recipe.data.dataset}; to distill across datasets pass --teacher-other-dataset "
                        "(teacher.other_dataset: true)")
    if recipe.method == "kd_self" and loaded.name != canonical_name(recipe.model):
        log(f"note: kd_self teacher is a {loaded.name}, student a {canonical_name(recipe.model)}")
    return loaded, pick


def _teacher_cache(recipe: Recipe, loaded: Loaded, info: dict, root: Path, dd: Dist, device: torch.device,
                   channels_last: bool) -> TeacherCache:
    """The cache of this teacher's logits on exactly this run's batches (and numerics)."""
    d = recipe.data
    return TeacherCache(root, {
        "teacher_sha256": info["sha256"], "teacher": [loaded.name, loaded.width],
        "data": [d.dataset, str(d.root), d.per_class, d.subset_seed, d.augment]
                + ([d.val_per_class] if d.val_per_class else []),
        "seed": recipe.seed, "batch": recipe.train.batch_size // dd.world, "rank": [dd.rank, dd.world],
        "numerics": [device.type, recipe.runtime.amp, channels_last, torch.get_num_threads(), torch.__version__]})
