"""A sweep's child processes: trials as their own command (``main.py --nproc N ...``) and helper workers, tied to
the sweep (when it dies, even by SIGKILL, they get SIGTERM: they save and stop). A trial's metrics.csv rows go to
the study as it writes them; a prune is a SIGTERM (a checkpoint, exit 130)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from utils.errors import RunInterrupted, TrainingStopped, UserError
from utils.run.recorder import LOCK_NAME
from utils.run.report import read_run

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 60.0  # for a trial's earlier process to save its checkpoint and end
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def popen_tied(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` of a child sent SIGTERM when this process dies (Linux), so that no trial outlives
    a killed sweep; elsewhere, the worker that runs the trial again stops what is left of it first."""
    parent = os.getpid()

    def tie() -> None:  # in the child, before exec (the setting survives exec)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the tie was made
            os.kill(os.getpid(), signal.SIGTERM)

    return subprocess.Popen(args, preexec_fn=tie, **kwargs)  # preexec_fn: tie() only calls prctl and kill


def _echo(stream: IO[str], last: list[str], quiet: threading.Event) -> None:
    """Pass the trial's stderr through (until ``quiet``), keeping the failure's message: the last "error: "
    line a process printed (torchrun's own log lines come after it), else the last non-empty line."""
    for line in stream:
        if not quiet.is_set():
            sys.stderr.write(line)
        if line.startswith("error: ") or (line.strip() and not (last and last[0].startswith("error: "))):
            last[:] = [line.strip()]


def run_command(
    command: list[str], overrides: list[str], run_dir: Path, after_validation: Callable[[int, dict], bool]
) -> None:
    """Run ``command + overrides`` to its end; failures raise as they would in-process (UserError, ...)."""
    proc = popen_tied([*command, *overrides], stderr=subprocess.PIPE, text=True, errors="replace")
    last: list[str] = []
    pruned = threading.Event()  # torchrun's report of the SIGTERM sent to prune is no news
    reader = threading.Thread(target=_echo, args=(proc.stderr, last, pruned), daemon=True)
    reader.start()
    reported = 0
    try:
        while not pruned.is_set():
            ended = proc.poll() is not None  # the rows written before it ended are read once more
            for row in read_run(run_dir).rows[reported:]:
                reported += 1
                if after_validation(int(row["epoch"]), {k: v for k, v in row.items() if k not in ("epoch", "step")}):
                    pruned.set()
                    proc.send_signal(signal.SIGTERM)
                    break
            if ended:
                break
            time.sleep(POLL_SECONDS)
        proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    reader.join()
    if proc.returncode == 0 or pruned.is_set():
        return
    message = last[0] if last else f"{command[0]} exited with code {proc.returncode}"
    if proc.returncode == 130:
        raise RunInterrupted(message)
    raise (UserError if proc.returncode == 2 else TrainingStopped)(message.removeprefix("error: "))


def holder(path: Path) -> str | None:
    """The text of the lock file ``path`` while a process holds it ('' until it is written), None when free."""
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip()
    return None


def stop_earlier_process(run_dir: Path) -> None:
    """A trial run again may find its earlier process still holding its run (a ``--nproc`` trial saving after
    the sweep's SIGKILL, or one not tied to it): it is sent SIGTERM (it saves and stops), SIGKILL after
    ``STOP_GRACE_SECONDS``; the run's own lock check then says who holds it."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    sent: dict[int, signal.Signals] = {}
    while (text := holder(run_dir / LOCK_NAME)) is not None and time.monotonic() < deadline + STOP_GRACE_SECONDS:
        pid, _, host = (text or "0").partition(" ")
        pid = int(pid) if host in ("", socket.gethostname()) else 0  # another machine's (a job's) stops itself
        stop = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        if pid and sent.get(pid) != stop:  # 0: the holder has not written its pid yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stop)
            sent[pid] = stop
        time.sleep(0.2)
