"""MNIST training samples per second under 1 and N processes (``./run.sh --nproc N``).

    python benchmarks/ddp_mnist.py [--nprocs 1 2] [--epochs 2] [--repeats 3] [key=value ...]

Each run trains the MNIST agent on random MNIST-shaped data (60000 images) for --epochs epochs;
samples/s = training samples seen by all processes / the run's wall seconds (summary.json,
validation included). Runs alternate between the process counts, --repeats times; the table
gives medians. On CPU each process gets OMP_NUM_THREADS = cores / N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def samples_per_second(n: int, exps: str, name: str, epochs: int, overrides: list[str]) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    cmd = [
        str(REPO / "run.sh"),
        "--nproc",
        str(n),
        str(REPO / "configs/mnist_exp_0.json"),
        "data_mode=random",
        "net=seed",  # the net of the recorded figures
        "random_size=60000",
        f"max_epoch={epochs}",
        f"experiments_dir={exps}",
        f"exp_name={name}",
        *overrides,
    ]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    summary = json.loads((Path(exps) / name / "summary.json").read_text())
    batch = json.loads((Path(exps) / name / "config.json").read_text())["batch_size"]
    return batch, summary["steps"] * batch * n / summary["wall_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rates: dict[int, list[float]] = {n: [] for n in args.nprocs}
    with tempfile.TemporaryDirectory() as exps:
        for r in range(args.repeats):
            for n in args.nprocs:
                batch, rate = samples_per_second(n, exps, f"n{n}r{r}", args.epochs, args.overrides)
                rates[n].append(rate)
    base = statistics.median(rates[args.nprocs[0]])
    print(f"{'processes':>9} {'batch/proc':>10} {'samples/s (median)':>18} {'all runs':>24} {'speed-up':>8}")
    for n, values in rates.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{n:>9} {batch:>10} {med:>18.0f} {runs:>24} {med / base:>8.2f}")


if __name__ == "__main__":
    main()
