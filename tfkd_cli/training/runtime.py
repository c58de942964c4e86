"""Process runtime: the device, torch's global flags, DDP, RNG state and signals.

Everything here touches process-wide state (torch flags, the global RNGs, the process group,
signal handlers), so the engine calls it at known points and nothing else does.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import RuntimeCfg

# -- the device ----------------------------------------------------------------------


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise TfkdError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TfkdError(f"device {spec} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TfkdError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return dev


def configure_torch(rt: RuntimeCfg, device: torch.device) -> None:
    """Threads, deterministic algorithms and cudnn.benchmark for this run."""
    if rt.threads:
        torch.set_num_threads(rt.threads)
    # Set both ways: the flag is process-wide and one process may train several runs (reproduce).
    torch.use_deterministic_algorithms(rt.deterministic)
    if rt.deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast_for(rt: RuntimeCfg, device: torch.device) -> Optional[Callable]:
    """A bf16 autocast context factory with runtime.amp on CUDA, else None."""
    if rt.amp and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return None


# -- distributed ---------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: then one process per device (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), select_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def wrap(model: nn.Module, dd: Dist, device: torch.device, compile_: bool) -> nn.Module:
    """The module the training step calls: `model` under DDP (torchrun) and torch.compile, as asked."""
    net: nn.Module = model
    if dd.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(net) if compile_ else net


def any_rank(flag: bool, dd: Dist, device: torch.device) -> bool:
    """`flag` on any rank (a signal may reach the ranks of a DDP run at different steps)."""
    if dd.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# -- RNG state -----------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": _np_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# -- signals -------------------------------------------------------------------------


class SignalGuard:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops."""

    def __init__(self) -> None:
        self.hit = False
        self._old: dict = {}

    def __enter__(self) -> "SignalGuard":
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.hit:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
