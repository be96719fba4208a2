"""Helpers for the benchmark scripts: build an agent from a config, time interleaved repetitions."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def build_agent(config: str, *overrides: str):
    """An agent of ``config`` writing into a fresh temporary experiments directory."""
    exps = tempfile.mkdtemp(prefix="bench-")
    cfg, cls = main.load_config(str(REPO / config), [f"experiments_dir={exps}", "exp_name=bench", *overrides])
    return cls(cfg)


def interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each callable, run in turn ``repeats`` times so that drifts in machine speed hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], baseline: str, unit: str = "s") -> None:
    base = statistics.median(times[baseline])
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"{name:<28} median {med:8.3f} {unit}  (min {min(values):.3f}, max {max(values):.3f})  "
            f"ratio to {baseline}: {med / base:.3f}"
        )
