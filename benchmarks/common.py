"""Helpers for the benchmark scripts: build an agent from a config, time interleaved repetitions."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def build_agent(config: str, *overrides: str):
    """An agent of ``config`` writing into a fresh temporary experiments directory."""
    exps = tempfile.mkdtemp(prefix="bench-")
    cfg, cls = main.load_config(str(REPO / config), [f"experiments_dir={exps}", "exp_name=bench", *overrides])
    return cls(cfg)


def interleaved(
    runs: dict[str, Callable[[], None]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each callable, run in turn ``repeats`` times.

    Alternating (in a rotating order) lets drifts in machine speed hit every callable alike. CPU time (this process,
    all threads) does not count the time another tenant of a shared machine holds the core,
    so on a noisy VM it is the steadier of the two.
    """
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no callable always goes first
            fn = runs[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def report(times: dict[str, list[float]], baseline: str, unit: str = "s") -> None:
    """Each callable against the baseline: the ratio of medians, of minimums, and the paired ratio.

    The paired ratio is the median over rounds of (time / the baseline's time in the same round):
    slow drifts of a shared machine cancel within a round, so it is the steadiest of the three.
    """
    base = times[baseline]
    for name, values in times.items():
        paired = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(
            f"{name:<28} median {statistics.median(values):8.3f} {unit} "
            f"(min {min(values):.3f}, max {max(values):.3f}); "
            f"ratio: medians {statistics.median(values) / statistics.median(base):.3f}, "
            f"minimums {min(values) / min(base):.3f}, paired {paired:.3f}"
        )


def plain_step(agent) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A hand-written optimisation step on the agent's model, optimizer and loss (what baselines run)."""
    model, optimizer, loss_fn = agent.model, agent.optimizer, agent.loss

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def epoch_over(loader, step: Callable) -> Callable[[], None]:
    """One epoch: ``step`` on every batch ``loader`` yields, as it yields them."""

    def run() -> None:
        for x, y in loader:
            step(x, y)

    return run


def epoch_in_memory(loader, step: Callable) -> tuple[Callable[[], None], int]:
    """The baseline epoch: the batches ``loader`` yields, read once into memory, then sliced; and their count."""
    batches = list(loader)
    x_all, y_all = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    sizes = [len(b[1]) for b in batches]

    def run() -> None:
        start = 0
        for n in sizes:
            step(x_all[start : start + n], y_all[start : start + n])
            start += n

    return run, len(sizes)
