"""The training engine: one run = one resolved recipe + seed -> one run directory.

The official CIFAR protocol is the default: SGD (momentum 0.9, wd 5e-4), lr = base_lr *
batch/128, one epoch of per-iteration linear warm-up, then x0.2 at epochs 60/120/160, test
evaluation every epoch, best-epoch reporting. The teacher runs in eval mode under
inference mode.

A run is built by `build.build_run` (data, teacher, student, optimizer, loss), restored from
its checkpoint when resumed, wrapped for DDP/compile (`runtime.wrap`) and trained by
`loop.EpochLoop`. This module decides what happens to a run directory: taking its lock, what
may be resumed or overwritten, and the files written before the first epoch; the directory's
files themselves (names, atomic writes, the lock) belong to `tfkd_cli.storage.rundir`.

Resume is exact: a run killed at any point and resumed ends with the same weights and the same
metrics.csv as an uninterrupted one on the CPU (see `tfkd_cli.training.loop`).

Crash safety: every file is written atomically (temp + fsync + rename). metrics.csv and
summary.json are rewritten from the checkpoint's history on resume. The run lock is taken
before anything in the run directory is read or changed, and an earlier run's files are
removed by --overwrite only once the new recipe, data and teacher have loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from tfkd_cli.storage import checkpoint as ckpt_io
from tfkd_cli.training import faults
from tfkd_cli.storage import rundir
from tfkd_cli.training import tracking
from tfkd_cli.training.build import Run, build_run
from tfkd_cli.errors import TfkdError
from tfkd_cli.training.loop import EpochLoop, LoopSettings
from tfkd_cli.models import count_params
from tfkd_cli.config.recipe import Recipe, dump
from tfkd_cli.training.runtime import Dist, init_distributed, set_rng_state, wrap
from tfkd_cli.training.state import State

__all__ = ["train"]


def train(recipe: Recipe, out: Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) one training described by `recipe`; returns its summary."""
    out = Path(out)
    tracking.check(recipe.runtime)  # a missing tracker package fails before any file is written
    dd, device = init_distributed(recipe.runtime.device)
    lock = rundir.RunLock(out)
    created = False
    if dd.main:
        if out.exists() and not out.is_dir():
            raise TfkdError(f"--out {out} exists and is not a directory")
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TfkdError(f"cannot create run directory {out}: {e.strerror}") from None
        # The lock comes first: nothing in `out` is read, changed or removed without it.
        try:
            stale = lock.acquire()
        except TfkdError:
            if created:
                _rmdir_if_empty(out)
            raise
        if stale:
            log(f"note: took over the lock of process {stale[0]} on {stale[1]}, which is gone")
    try:
        if dd.main:
            rundir.remove_temp_files(out)
            resume_ck = _check_out_dir(out, recipe, resume, overwrite)
        else:
            last = out / rundir.LAST
            resume_ck = ckpt_io.load(last) if resume and not overwrite and last.exists() else None
        try:
            return _train(recipe, out, resume_ck, overwrite, dd, device, progress, log)
        except RuntimeError as e:
            if recipe.runtime.deterministic and "deterministic" in str(e):
                first = str(e).strip().splitlines()[0].split(". ")[0]
                raise TfkdError(f"--deterministic: {first}; this model cannot train deterministically "
                                "on this device, run it without --deterministic") from None
            raise
    finally:
        lock.release()
        if created:
            _rmdir_if_empty(out)  # a run that failed before writing anything leaves no trace


def _train(recipe: Recipe, out: Path, resume_ck: Optional[dict], overwrite: bool, dd: Dist,
           device: torch.device, progress: bool, log: Callable[[str], None]) -> dict:
    run = build_run(recipe, device, dd, log=log, cache_root=out.resolve().parent,
                    teacher_sha=(resume_ck or {}).get("teacher_sha256"), eval_teacher=dd.main)
    state = State() if resume_ck is None else _restore(run, resume_ck, recipe, out, dd, device, log)
    fwd = wrap(run.model, dd, device, recipe.runtime.compile)
    base_summary = _prepare_dir(recipe, run, state, out, overwrite, resume_ck is not None, dd, device) \
        if dd.main else {}
    loop = EpochLoop(LoopSettings.of(recipe, base_summary), run, fwd, state, out, dd, device, log,
                     hooks=faults.from_env())
    steps = run.data.steps_per_epoch
    track = tracking.open(out, recipe, state.epoch * steps + state.step, steps, log) if dd.main else tracking.NONE
    return loop.run_epochs(progress, track)


def _restore(run: Run, ck: dict, recipe: Recipe, out: Path, dd: Dist, device: torch.device,
             log: Callable[[str], None]) -> State:
    """Weights, optimizer, progress and RNG states of the checkpoint `ck` (this run's last.pt)."""
    last = out / rundir.LAST
    ckpt_io.load_weights(run.model, ck["model"], last, f"this run's {run.arch['model']}")
    try:
        run.optimizer.load_state_dict(ck["optimizer"])
        state = State.from_dict(ck["state"])
        state.resumes += 1
        set_rng_state(ck["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise TfkdError(f"{last} is damaged ({type(e).__name__}: {e}); cannot resume "
                        "from it (--overwrite starts over)") from None
    if dd.main:
        if state.epoch >= recipe.train.epochs:
            log(f"resuming {out}: all {state.epoch} epochs are done; finishing its files")
        else:
            log(f"resuming {out} at epoch {state.epoch + 1} step {state.step}")
        threads = ck.get("threads")
        if device.type == "cpu" and threads and threads != torch.get_num_threads():
            log(f"note: this session uses {torch.get_num_threads()} CPU threads, the checkpoint {threads}; "
                "results can differ in the last bits from an uninterrupted run (set runtime.threads)")
    return state


def _prepare_dir(recipe: Recipe, run: Run, state: State, out: Path, overwrite: bool, resumed: bool,
                 dd: Dist, device: torch.device) -> dict:
    """Rank 0, once everything is validated: clear an earlier run (--overwrite), write recipe.yaml,
    metrics.csv (on resume) and a running summary.json; returns the summary's fixed fields."""
    if overwrite:
        rundir.clear(out)
    elif not resumed:
        (out / rundir.TIMINGS).unlink(missing_ok=True)  # from an attempt that left no checkpoint
    rundir.atomic_write_text(out / rundir.RECIPE, dump(recipe))
    if state.history:  # a kill between last.pt and metrics.csv left the file one epoch behind
        rundir.write_metrics(out, state.history)
    rt, data = recipe.runtime, run.data
    base_summary = {
        "status": "running", "name": recipe.name, "recipe_hash": recipe.hash(), "seed": recipe.seed,
        "model": run.arch["model"], "width": recipe.width, "method": recipe.method,
        "dataset": recipe.data.dataset, "num_classes": data.num_classes,
        "num_train": data.num_train, "num_test": data.num_test,
        "val_per_class": recipe.data.val_per_class, "num_val": data.val.num_test if data.val else 0,
        "params": count_params(run.model), "epochs": recipe.train.epochs,
        "world_size": dd.world, "amp": bool(run.autocast), "compile": rt.compile,
        "channels_last": run.channels_last, "deterministic": rt.deterministic, "teacher": run.teacher_info,
        **rundir.provenance(device),
    }
    if data.info.build is not None:  # a folder set: the size and statistics it was read with (imagefolder)
        base_summary["normalization"] = {"image_size": data.image_size, "mean": list(data.mean), "std": list(data.std)}
    rundir.write_summary(out, {**base_summary, **state.summary()})
    return base_summary


# -- what an existing run directory allows -------------------------------------

_RESUME_KEYS = ("model", "optimizer", "state", "rng", "recipe_hash")


def _check_out_dir(out: Path, recipe: Recipe, resume: bool, overwrite: bool) -> Optional[dict]:
    """Decide what to do with `out` (which we hold the lock of); the checkpoint to resume from, if any."""
    if overwrite:
        return None
    try:
        summary = rundir.read_summary(out)
    except TfkdError:  # a damaged summary.json is rewritten by a resumed run; it still marks a run
        summary = {"status": "unknown"}
    last = out / rundir.LAST
    if summary and summary.get("status") == "finished" and not resume:
        raise TfkdError(f"{out} already holds a finished run; use --resume to keep it, "
                        "--overwrite to replace it, or another --out")
    if not resume and (last.exists() or summary):
        raise TfkdError(f"{out} already holds a run; use --resume to continue it or --overwrite to replace it")
    if not resume or not last.exists():
        return None
    ck = ckpt_io.load(last)
    if not ckpt_io.is_tfkd(ck) or any(k not in ck for k in _RESUME_KEYS):
        raise TfkdError(f"{last} is not a resumable tfkd checkpoint; cannot resume from it (--overwrite starts over)")
    if not isinstance(ck.get("version"), int) or ck["version"] > ckpt_io.VERSION:
        raise TfkdError(f"{last}: checkpoint format version {ck.get('version')} is not one this tfkd reads "
                        f"(<= {ckpt_io.VERSION}); upgrade tfkd")
    if not recipe.matches_hash(ck.get("recipe_hash")):  # also a run written before identity version 2
        raise TfkdError(f"{last} was written by another recipe (hash {ck.get('recipe_hash')} vs "
                        f"{recipe.hash()}); resume with the same recipe, or --overwrite")
    return ck


def _rmdir_if_empty(out: Path) -> None:
    try:
        out.rmdir()
    except OSError:
        pass
