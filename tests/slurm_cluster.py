"""A real one-node SLURM cluster in a temp folder, for the --slurm tests and the SLURM tutorial.

Debian's packages (``apt-get install slurm-wlm munge``; ``.ci/run`` installs them when missing):
munged, slurmctld and slurmd run in the foreground as children of this process (no systemd), with
their config, state, sockets and logs under the folder, on free ports. Containers have no cgroups
for SLURM: ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``. ``SLURM_CONF`` points the
client commands (sbatch, squeue, scontrol) at it while the cluster runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"
CPUS = 8  # more than the machine has (config_overrides): a few small jobs at once


def missing() -> list[str]:
    """The daemons and client commands this machine lacks (empty: a cluster can start)."""
    paths = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
    lacking = [name for name, path in paths.items() if shutil.which(name) is None and not Path(path).exists()]
    return lacking + [c for c in ("sbatch", "squeue", "scontrol", "sinfo") if shutil.which(c) is None]


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _config(folder: Path, ctld_port: int, slurmd_port: int, munge_socket: Path) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
ClusterName=template
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=10
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=20
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def cluster(folder: Path, timeout: float = 60) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd under ``folder``; yields the environment the clients need.

    Everything started is stopped on the way out, also after a failure; a daemon that does not come
    up within ``timeout`` seconds raises with the end of its log.
    """
    if lacking := missing():
        raise RuntimeError(f"no {', '.join(lacking)} here: apt-get install slurm-wlm munge (.ci/run does)")
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    os.chmod(key, 0o600)
    munge_socket = folder / "munge" / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, *_free_ports(2), munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    commands = {
        "munged": [
            _daemon("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
            f"--pid-file={folder}/munge/munged.pid", f"--log-file={folder}/munged.log",
            f"--seed-file={folder}/munge/munged.seed",
        ],
        "slurmctld": [_daemon("slurmctld"), "-D", "-i", "-f", str(conf)],
        "slurmd": [_daemon("slurmd"), "-D", "-f", str(conf)],
    }  # fmt: skip
    started: list[subprocess.Popen] = []
    try:
        for name in DAEMONS:
            log = open(folder / f"{name}.out", "wb")  # noqa: SIM115 (closed with the process)
            started.append(
                subprocess.Popen(commands[name], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            log.close()
            if name == "munged":
                _wait(lambda: munge_socket.exists(), timeout, folder / "munged.log", started[-1])
        _wait(lambda: _node_idle(env), timeout, folder / "slurmd.log", started[-1])
        yield {"SLURM_CONF": str(conf)}
    finally:
        _cancel_all(env)
        for proc in reversed(started):
            _stop(proc)


def _node_idle(env: dict) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")


def _wait(ready, timeout: float, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{Path(proc.args[0]).name} did not come up (exit {proc.poll()}): {tail}")
        time.sleep(0.3)


def _cancel_all(env: dict) -> None:
    """Cancel the cluster's jobs, so that no job process outlives the test."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["scancel", "--full", "--signal=KILL", "--user=root"], env=env, timeout=20, capture_output=True)
        time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
