"""Ctrl-C and SIGTERM during a run: training saves a checkpoint and stops; evaluation stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from utils.errors import RunInterrupted
from utils.training import distributed


class Signals:
    """SIGINT and SIGTERM while ``installed``. In training a signal is only remembered (``received``): the loop
    saves and stops at its next look (every log_every steps, on every rank at once). A second Ctrl-C aborts at
    once, except under torchrun, which passes on the signal it got itself after the terminal's (and kills the
    workers if they take too long); a second SIGTERM never does (SLURM's after its warning, a scheduler's: the
    sender kills on its own timeout). In evaluation a signal stops at once: there is nothing to save."""

    def __init__(self, warn: Callable[[str], None], log_every: int, mode: str) -> None:
        self.warn, self.log_every, self.mode = warn, log_every, mode
        self.received: int | None = None
        self._pid = os.getpid()  # the process whose handler saves (not a forked loader worker)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        handler = self.on_signal if self.mode == "train" else self.stop_now
        before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in before.items():
                signal.signal(s, h)

    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGINT).name

    def on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a loader worker (forked with this handler): the main process saves
            return
        torchrun = distributed.launched_by_torchrun()
        if self.received is not None and not torchrun and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is not None:
            return
        self.received = signum
        again = "" if torchrun else " (Ctrl-C again to abort)"
        self.warn(f"{signal.Signals(signum).name}: saving a checkpoint within {self.log_every} steps{again}")

    def stop_now(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        raise RunInterrupted(f"stopped by {name} during mode={self.mode}: nothing to save")
