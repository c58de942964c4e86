"""A real single-node Slurm cluster on this machine, for the Slurm executor's tests.

`start(folder)` writes a slurm.conf naming this host (`hostname -s`) as controller and only
node (2 CPUs, no cgroups: proctrack/linuxproc, task/none, select/cons_tres), with all state,
spool, logs and the munge socket under `folder`, and starts munged, slurmctld and slurmd.
`Cluster.stop()` ends the daemons it started, by pid. The cluster is reached through
SLURM_CONF, so it never touches a system-wide Slurm.

Two partitions: `debug` (the node, default) and `remote`, whose only node `ghost` is never
up and is not this host: submitting a run there must be refused because a runs folder on a
local filesystem cannot be seen from it (no job ever runs on it).

Run it by hand: `python3 tests/slurm_cluster.py DIR` starts a cluster and prints the
SLURM_CONF to export; `kill` the pids it prints to stop it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "slurmctld", "slurmd")


def _sbin(name: str) -> Optional[str]:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    folder: Path
    conf: Path
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def stop(self) -> None:
        """SIGTERM each daemon we started (by pid), then SIGKILL what is left after 10 s."""
        for name in reversed(DAEMONS):
            pid = self.pids.get(name)
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for name, pid in self.pids.items():
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def why_not() -> Optional[str]:
    """None when the daemons can be started here, else the reason."""
    if sys.platform != "linux":
        return "Slurm tests need Linux"
    missing = [d for d in DAEMONS if not _sbin(d)] + [c for c in ("sbatch", "squeue", "scancel") if not shutil.which(c)]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs (CI runs as root)"
    return None


def _conf(folder: Path, host: str, cpus: int) -> str:
    return f"""\
ClusterName=tfkdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire is also the delay before a requeued job may start again (default 120 s)
AuthInfo=socket={folder}/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
NodeName=ghost NodeAddr=127.0.0.2 CPUs=1 State=FUTURE
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=remote Nodes=ghost MaxTime=INFINITE State=UP
"""


def _wait_for(what: str, ok, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ok():
            return
        time.sleep(0.3)
    tail = log.read_text().strip().splitlines()[-5:] if log.exists() else []
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; {log}: " + " | ".join(tail))


def start(folder: Path, cpus: int = 2) -> Cluster:
    """Start munged, slurmctld and slurmd under `folder`; raises RuntimeError if one does not come up."""
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, host, cpus))
    cl = Cluster(folder, conf)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    sock = folder / "munge" / "munge.socket"
    try:
        cl.pids["munged"] = _spawn([_sbin("munged"), "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                                    f"--pid-file={folder}/munge/munged.pid", f"--log-file={folder}/log/munged.log",
                                    f"--seed-file={folder}/munge/munged.seed"], env, folder / "log" / "munged.out")
        _wait_for("munged", sock.exists, 15, folder / "log" / "munged.log")
        cl.pids["slurmctld"] = _spawn([_sbin("slurmctld"), "-D", "-i", "-f", str(conf)], env,
                                      folder / "log" / "slurmctld.out")
        _wait_for("slurmctld", lambda: _ok(["scontrol", "ping"], env, "UP"), 30, folder / "log" / "slurmctld.log")
        cl.pids["slurmd"] = _spawn([_sbin("slurmd"), "-D", "-f", str(conf), "-N", host], env,
                                   folder / "log" / "slurmd.out")
        _wait_for("slurmd", lambda: _ok(["sinfo", "-h", "-p", "debug", "-o", "%T"], env, "idle"), 40,
                  folder / "log" / "slurmd.log")
    except BaseException:
        cl.stop()
        raise
    return cl


def _spawn(cmd: list, env: dict, out: Path) -> int:
    with open(out, "ab") as fh:
        return subprocess.Popen([str(c) for c in cmd], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True).pid


def _ok(cmd: list, env: dict, want: str) -> bool:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return r.returncode == 0 and want in r.stdout


if __name__ == "__main__":
    reason = why_not()
    if reason:
        sys.exit(f"cannot start a cluster: {reason}")
    c = start(Path(sys.argv[1]))
    print(f"export SLURM_CONF={c.conf}")
    print("pids:", " ".join(f"{k}={v}" for k, v in c.pids.items()))


# -- the pytest fixture (imported by tests/test_slurm.py) -------------------------------

try:
    import pytest
except ImportError:  # run by hand without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def slurm_cluster(tmp_path_factory):
        """A started cluster for the session; skipped (with the reason) only where the daemons
        cannot start, unless TFKD_REQUIRE_SLURM=1 (CI), where that is a failure."""
        reason = why_not()
        if reason is None:
            try:
                cl = start(tmp_path_factory.mktemp("slurm"))
            except RuntimeError as e:
                reason = f"Slurm daemons did not start: {e}"
        if reason is not None:
            if os.environ.get("TFKD_REQUIRE_SLURM") == "1":
                pytest.fail(f"TFKD_REQUIRE_SLURM=1 but {reason}")
            print(f"skipping Slurm tests: {reason}")
            pytest.skip(reason)
        yield cl
        cl.stop()
