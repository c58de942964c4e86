"""A run directory: its files, its lock, and its provenance.

Layout (one run = one directory):
  recipe.yaml      the fully resolved recipe (what the run is a function of, with its seed)
  metrics.csv      one row per finished epoch
  last.pt          latest checkpoint (also written mid-epoch with --checkpoint-every)
  best.pt          checkpoint of the best test top-1 epoch (ties go to the later epoch, as official)
  epoch_N.pt       kept epochs (train.keep_epochs), e.g. De-KD's poorly-trained teachers
  summary.json     status, best/last metrics, provenance; written atomically
  .lock            pid and host of the one process writing this run (held with flock)
"""

from __future__ import annotations

import csv
import fcntl
import functools
import io
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import torch

from tfkd_cli import __version__
from tfkd_cli.checkpoint import atomic_write_text
from tfkd_cli.errors import TfkdError

RECIPE = "recipe.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch}.pt"


def read_summary(run: Path) -> Optional[dict]:
    p = Path(run) / SUMMARY
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TfkdError(f"corrupt run summary {p}: {e}") from None


def write_summary(run: Path, summary: dict) -> None:
    atomic_write_text(Path(run) / SUMMARY, json.dumps(summary, indent=2, sort_keys=False) + "\n")


def is_finished(run: Path) -> bool:
    s = read_summary(run)
    return bool(s) and s.get("status") == "finished"


def write_metrics(run: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv whole (atomic): rows are few, and a resume must never duplicate one."""
    if not rows:
        return
    buf = io.StringIO()
    names = list(dict.fromkeys(k for r in rows for k in r))  # rows of a run resumed from an older tfkd may lack some
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(run) / METRICS, buf.getvalue())


def read_metrics(run: Path) -> list[dict]:
    p = Path(run) / METRICS
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


# -- locking -------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """One writer per run directory: the lock file `.lock` holds `pid host` and an flock.

    The kernel drops the flock when its process dies (even by SIGKILL), so a lock file left
    by a dead process is stale by construction and simply taken over; a pid reused by an
    unrelated process cannot keep a run locked.
    """

    def __init__(self, run: Path):
        self.path = Path(run) / LOCK
        self.held = False
        self._fd: Optional[int] = None

    def owner(self) -> Optional[tuple[int, str]]:
        try:
            pid, host = self.path.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def is_stale(self) -> bool:
        """True when the lock file exists but no live process holds it."""
        return self.path.exists() and not is_locked(self.path.parent)

    def acquire(self) -> Optional[tuple[int, str]]:
        """Take the lock; returns the (pid, host) of a dead previous holder whose lock was taken over."""
        run = self.path.parent
        for attempt in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise TfkdError(f"cannot write to run directory {run}: cannot create {self.path}: "
                                f"{e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if attempt < 4:  # someone probing with is_locked() holds it for a moment
                    time.sleep(0.05)
                    continue
                o = self.owner()
                who = f"process {o[0]} on {o[1]}" if o else "another process"
                raise TfkdError(f"run {run} is in use by {who}; wait for it to finish or stop it "
                                "(a lock left by a dead process is taken over)") from None
            except OSError as e:
                os.close(fd)
                raise TfkdError(f"cannot lock {self.path}: {e.strerror}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (unlinked) it between our open and flock: retry
                os.close(fd)
                continue
            previous = self.owner()
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            except OSError as e:
                os.close(fd)
                raise TfkdError(f"cannot write {self.path}: {e.strerror}") from None
            self._fd, self.held = fd, True
            return previous
        raise TfkdError(f"cannot lock {run}: the lock file keeps changing")

    def release(self) -> None:
        if self.held:
            try:
                os.unlink(self.path)  # unlink while still locked: see the inode check in acquire
            except FileNotFoundError:
                pass
            assert self._fd is not None
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(run: Path) -> bool:
    """Whether a live process holds the lock of `run` (never blocks, never creates a file)."""
    path = Path(run) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock on this filesystem: fall back to the pid in the file
        o = RunLock(run).owner()
        return bool(o) and (o[1] != socket.gethostname() or _alive(o[0]))
    finally:
        os.close(fd)
    return False


# -- provenance ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def git_commit() -> Optional[str]:
    """The commit of the tfkd checkout (with '+dirty' when it has local changes), read once per
    process, at its first run: the code a process runs is the code it loaded, so a long
    `reproduce` must not record a HEAD that moved while it ran."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def provenance(device: torch.device) -> dict:
    import torchvision

    return {
        "tfkd": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "hardware": hardware(device),
        "host": socket.gethostname(),
    }
