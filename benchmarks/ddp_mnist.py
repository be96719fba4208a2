"""MNIST training samples per second under 1 and N processes (``./run.sh --nproc N``).

    python benchmarks/ddp_mnist.py [--nprocs 1 2] [--epochs 2] [key=value ...]

Each run trains the MNIST agent on random MNIST-shaped data (60000 images) for --epochs epochs;
samples/s = training samples seen by all processes / the run's wall seconds (summary.json,
validation included). On CPU each process gets OMP_NUM_THREADS = cores / N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as exps:
        for n in args.nprocs:
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
            cmd = [
                str(REPO / "run.sh"),
                "--nproc",
                str(n),
                str(REPO / "configs/mnist_exp_0.json"),
                "data_mode=random",
                "random_size=60000",
                f"max_epoch={args.epochs}",
                f"experiments_dir={exps}",
                f"exp_name=n{n}",
                *args.overrides,
            ]
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            summary = json.loads((Path(exps) / f"n{n}" / "summary.json").read_text())
            config = json.loads((Path(exps) / f"n{n}" / "config.json").read_text())
            samples = summary["steps"] * config["batch_size"] * n
            rows.append((n, config["batch_size"], summary["wall_seconds"], samples / summary["wall_seconds"]))
    base = rows[0][3]
    print(f"{'processes':>9} {'batch/proc':>10} {'wall s':>8} {'samples/s':>10} {'speed-up':>8}")
    for n, batch, wall, rate in rows:
        print(f"{n:>9} {batch:>10} {wall:>8.1f} {rate:>10.0f} {rate / base:>8.2f}")


if __name__ == "__main__":
    main()
