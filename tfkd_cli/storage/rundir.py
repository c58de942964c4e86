"""A run directory: its files, their atomic writes, its lock, and its provenance.

This module is the one owner of the run directory's file names and of how any tfkd file is
written (checkpoints, tables and figures use `atomic_write` too). The engine decides what
a run may resume or overwrite; the loop decides when each file is written.

Layout (one run = one directory):
  recipe.yaml      the fully resolved recipe (what the run is a function of, with its seed)
  metrics.csv      one row per finished epoch
  timings.csv      seconds and images/s per epoch (informational; appended)
  last.pt          latest checkpoint (also written mid-epoch with --checkpoint-every)
  best.pt          checkpoint of the best test top-1 epoch (ties go to the later epoch, as official)
  epoch_N.pt       kept epochs (train.keep_epochs), e.g. De-KD's poorly-trained teachers
  summary.json     status, best/last metrics, provenance; written atomically
  .lock            pid and host of the one process writing this run (held with flock)

Atomic writes go to a temporary file in the same directory, are fsynced, then renamed over
the target, so a crash leaves either the old file or the new one, never half of one.
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
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from tfkd_cli import __version__
from tfkd_cli.errors import TfkdError

RECIPE = "recipe.yaml"
METRICS = "metrics.csv"
TIMINGS = "timings.csv"
SUMMARY = "summary.json"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"

# What a run writes into its directory; --overwrite removes exactly these (and epoch_*.pt).
RUN_FILES = (RECIPE, METRICS, SUMMARY, LAST, BEST, TIMINGS)


# -- atomic writes ---------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None],
                 before_replace: Optional[Callable[[], None]] = None) -> None:
    """Write `path` via a temp file + fsync + rename; errors name the path.

    The temp file (`.<name>.<random>.tmp` beside the target) gets the target's permissions,
    or 0666 minus the umask for a new file, like a plain open(). `before_replace` is a test
    hook called with the temp file written but not yet flushed, synced or renamed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_UMASK
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if before_replace is not None:
                before_replace()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise TfkdError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def is_temp_file(name: str) -> bool:
    """A temp file left by an `atomic_write` that was killed before its rename."""
    return name.startswith(".") and name.endswith(".tmp")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# -- the run's files ---------------------------------------------------------------------


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


def append_timings(run: Path, row: dict) -> None:
    """One row of timings.csv; appended, not rewritten: it only informs, and is never resumed from."""
    p = Path(run) / TIMINGS
    new = not p.exists()
    with open(p, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(str(v) for v in row.values()) + "\n")


def clear(run: Path) -> None:
    """Remove an earlier run's files (--overwrite); nothing else in the directory is touched."""
    for name in RUN_FILES:
        (Path(run) / name).unlink(missing_ok=True)
    for p in Path(run).glob("epoch_*.pt"):
        p.unlink()


def remove_temp_files(run: Path) -> None:
    """Temp files of atomic writes that a killed process never renamed (the run's own only)."""
    ours = tuple(f".{n}." for n in RUN_FILES) + (".epoch_",)
    for p in Path(run).iterdir():
        if is_temp_file(p.name) and p.name.startswith(ours):
            p.unlink(missing_ok=True)


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


class Claim:
    """A `reproduce` process's claim on a run it is about to start, held until its child exits.

    A child run takes the run's `.lock` only once its interpreter and torch have loaded
    (seconds), so two processes sharing a runs folder would both see the run unlocked and both
    spawn it. The claim closes that window: a flock on `<runs>/.claims/<run>`, taken before the
    spawn, dropped by the kernel if the claiming process dies.
    """

    def __init__(self, run: Path):
        self.path = Path(run).parent / ".claims" / Path(run).name
        self._fd: Optional[int] = None

    def take(self) -> bool:
        """Claim the run; False when another live process holds the claim."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held elsewhere (or no flock here: the run's own lock still guards it)
            os.close(fd)
            return False
        self._fd = fd
        return True

    def drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the file stays: unlinking would race a waiting process's open
            self._fd = None


# -- provenance ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def git_commit() -> Optional[str]:
    """The commit of the tfkd checkout (with '+dirty' when it has local changes), read once per
    process, at its first run: the code a process runs is the code it loaded, so a long
    `reproduce` must not record a HEAD that moved while it ran. $TFKD_COMMIT, when set, is
    recorded instead: a tree copied to another machine (a lent GPU) may arrive without .git, or
    with stale git metadata (seen: HEAD of the session's start, '+dirty'), and its sender knows
    which commit it sent."""
    if os.environ.get("TFKD_COMMIT"):
        return os.environ["TFKD_COMMIT"]
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
