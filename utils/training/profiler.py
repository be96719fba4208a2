"""torch.profiler over a few training steps: a Chrome/Perfetto trace and the top operators in the log.

Create the StepProfiler right before the first training step (profiling starts there), call
``step()`` after every training step and ``close()`` when training ends (also on an error or an
interrupt; calling it twice is harmless). The first ``warmup`` steps warm the profiler up and
are discarded; the next ``steps`` are recorded. When they end, the trace goes to
``out_dir/profile_trace.json`` (open it in chrome://tracing or ui.perfetto.dev) and the ~15
operators with the most self time are logged; from then on ``step()`` returns at once.

A run that ends while steps are being recorded writes what it recorded and says how many steps
that was; one that ends during the warm-up writes nothing and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from utils.training.callbacks import Callback

TRACE_FILE = "profile_trace.json"
TOP_OPERATORS = 15


class StepProfiler:
    """Profiles ``steps`` training steps after ``warmup`` ones; a no-op when not ``enabled`` (other ranks)."""

    def __init__(
        self,
        steps: int,
        out_dir: Path,
        log: Callable[[str], None],
        warmup: int = 2,
        enabled: bool = True,
        cuda: bool | None = None,
    ) -> None:
        if steps < 1 or warmup < 0:
            raise ValueError(f"StepProfiler needs steps >= 1 and warmup >= 0, got {steps} and {warmup}")
        self.steps, self.warmup, self.log = steps, warmup, log
        self.trace_path = Path(out_dir) / TRACE_FILE
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.seen = 0  # training steps done since the start
        self._profiler: torch.profiler.profile | None = None
        if enabled:
            activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self.cuda else [])]
            self._profiler = torch.profiler.profile(
                activities=activities,
                schedule=torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1),
                on_trace_ready=self._write,
            )
            self._profiler.start()

    @property
    def running(self) -> bool:
        """False once profiling is over (or was never on): ``step()`` then returns at once."""
        return self._profiler is not None

    def step(self) -> None:
        """Call after every training step."""
        if self._profiler is None:
            return
        self.seen += 1
        self._profiler.step()
        if self.seen == self.warmup + self.steps:  # the trace was written during step(): stop for good
            self.close()

    def close(self) -> None:
        """Stop profiling; a trace cut short by the end of the run is written, with a note in the log."""
        profiler, self._profiler = self._profiler, None
        if profiler is None:
            return
        if self.seen <= self.warmup:
            self.log(
                f"profile: the run ended after {self.seen} step(s), before any profiled step ended "
                f"({self.warmup} warm-up steps come first); no trace written"
            )
        profiler.stop()  # once a profiled step has ended, this calls _write with what was recorded

    def _write(self, profiler: torch.profiler.profile) -> None:
        recorded = min(self.seen, self.warmup + self.steps) - self.warmup
        if recorded < 1:  # stopped before a profiled step ended: close() has said so
            return
        self.trace_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.trace_path.with_name(f".{TRACE_FILE}.tmp")
        profiler.export_chrome_trace(str(partial))
        os.replace(partial, self.trace_path)  # a reader never sees half a trace
        cut = "" if recorded == self.steps else f" (the run ended: {recorded} of the {self.steps} asked for)"
        lines = [f"profile: {recorded} step(s) after {self.warmup} warm-up step(s){cut}; trace in {self.trace_path}"]
        averages = profiler.key_averages()
        sort_keys = ["self_cpu_time_total", *(["self_device_time_total"] if self.cuda else [])]
        for sort_by in sort_keys:
            lines.append(f"top {TOP_OPERATORS} operators by {sort_by}:")
            lines.append(averages.table(sort_by=sort_by, row_limit=TOP_OPERATORS))
        self.log("\n".join(lines))


class ProfileSteps(Callback):
    """profile_steps: a StepProfiler over the first training steps of this run (rank 0 only)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.profiler: StepProfiler | None = None

    def on_train_start(self, agent) -> None:
        out, log = agent.run_dir / "out", agent.recorder.info
        self.profiler = StepProfiler(self.steps, out, log, enabled=agent.rank == 0, cuda=agent.device.type == "cuda")

    def on_train_batch_end(self, agent, logs: dict) -> None:
        self.profiler.step()

    def on_train_end(self, agent) -> None:
        if self.profiler is not None:
            self.profiler.close()  # an interrupted run writes what it recorded
