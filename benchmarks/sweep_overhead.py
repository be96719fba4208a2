"""What a sweep costs beyond its trials, and what a second worker buys.

    python benchmarks/sweep_overhead.py [--trials 6] [--repeats 3] [--random-size 2000] [--epochs 2]

Overhead: the same K configs (a grid over the learning rate, MNIST on random data) once as
``./run.sh --sweep`` with one worker, once as K ``./run.sh CONFIG`` commands one after the other;
both totals are whole-command wall seconds, torch's import and the plots included. The table gives
the ratio (sweep / one by one) and the seconds per trial beyond its training (wall minus the trials'
own ``wall_seconds``). Workers: the same sweep with ``--workers 2`` against ``--workers 1``, in
trials per second. Each repeat runs all three in turn (order rotating); the table gives medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/mnist_exp_0.json")


def _settings(args: argparse.Namespace) -> list[str]:
    return [
        "data_mode=random",
        "net=seed",  # the net of the recorded figures
        f"random_size={args.random_size}",
        "valid_size=500",
        f"max_epoch={args.epochs}",
        "scheduler=null",
        "torch_threads=1",
    ]


def _lrs(trials: int) -> list[float]:
    return [round(0.05 * 2 ** (i / 2), 4) for i in range(trials)]


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
    return time.perf_counter() - start


def sweep(args: argparse.Namespace, exps: Path, name: str, workers: int) -> tuple[float, float]:
    """(whole-command seconds, the trials' own seconds) of one sweep."""
    spec = {
        "name": name,
        "config": CONFIG,
        "overrides": {"experiments_dir": str(exps)},
        "parameters": {"optimizer.args.lr": _lrs(args.trials)},
        "method": "grid",
    }
    path = exps / f"{name}.json"
    path.write_text(json.dumps(spec))
    wall = _timed([str(REPO / "run.sh"), "--sweep", str(path), *_settings(args), "--workers", str(workers)])
    with open(exps / name / "results.csv", newline="") as f:
        own = sum(float(r["wall_seconds"]) for r in csv.DictReader(f))
    return wall, own


def one_by_one(args: argparse.Namespace, exps: Path, name: str) -> tuple[float, float]:
    wall = own = 0.0
    for i, lr in enumerate(_lrs(args.trials)):
        exp = f"{name}_{i}"
        overrides = [*_settings(args), f"optimizer.args.lr={lr}", f"experiments_dir={exps}", f"exp_name={exp}"]
        wall += _timed([str(REPO / "run.sh"), CONFIG, *overrides])
        own += json.loads((exps / exp / "summary.json").read_text())["wall_seconds"]
    return wall, own


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    kinds = ["sweep", "one_by_one", "workers2"]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        exps = Path(tmp)
        for r in range(args.repeats):
            for kind in kinds[r % 3 :] + kinds[: r % 3]:
                name = f"{kind}_{r}"
                if kind == "one_by_one":
                    times[kind].append(one_by_one(args, exps, name))
                else:
                    times[kind].append(sweep(args, exps, name, 2 if kind == "workers2" else 1))
    k = args.trials
    ratio = statistics.median(s[0] / o[0] for s, o in zip(times["sweep"], times["one_by_one"], strict=True))
    extra = {kind: statistics.median((w - own) / k for w, own in times[kind]) for kind in kinds[:2]}
    speed = statistics.median(one[0] / two[0] for one, two in zip(times["sweep"], times["workers2"], strict=True))
    print(f"{k} trials, {args.epochs} epochs of {args.random_size} random MNIST images each, {args.repeats} repeats")
    print(f"sweep / one by one (whole commands): {ratio:.3f}")
    print(f"seconds per trial beyond training: sweep {extra['sweep']:.2f}, one by one {extra['one_by_one']:.2f}")
    print(f"2 workers vs 1: {speed:.2f}x the trials per second")


if __name__ == "__main__":
    main()
