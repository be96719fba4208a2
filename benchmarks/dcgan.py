"""DCGAN training speed: images per second through BaseAgent's loop, at image_size 64 and 32.

    python benchmarks/dcgan.py [--steps 20] [--repeats 3] [--batch-size 64] [--sizes 64 32] [--ngf 64]

Each repetition is one epoch of ``--steps`` DCGAN steps (a discriminator step and a generator step on a
batch) on synthetic images (data_mode=random, uint8 from memory, so decoding costs nothing), through
``BaseAgent.train_one_epoch``: the loop as training runs it, without the per-epoch sample grid. The
sizes alternate between repetitions. Also prints one validation's time (the SWD on 64 held-out images).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import build_agent, interleaved

from agents.base import BaseAgent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32], choices=[64, 32])
    parser.add_argument("--ngf", type=int, default=64, help="ngf and ndf (64: the paper's networks)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    agents = {}
    n = max(args.batch_size * args.steps, 64) + 64  # 64 held out for the validation timing
    for size in args.sizes:
        agent = build_agent(
            "configs/dcgan_exp_0.json",
            "data_mode=random",
            f"image_size={size}",
            f"ngf={args.ngf}",
            f"ndf={args.ngf}",
            f"batch_size={args.batch_size}",
            f"random_size={n}",
            f"valid_fraction={64 / n}",
            f"max_train_batches={args.steps}",
            "num_workers=0",
            f"device={args.device}",
            f"torch_threads={args.threads}" if args.threads else "torch_threads=null",
            "log_every=1000000",
        )
        agent.train_step(next(iter(agent.data_loader.train_loader)))  # warm-up (allocations, cuDNN choices)
        agents[f"image_size {size}"] = agent

    def epoch(agent) -> Callable[[], None]:
        def run() -> None:
            BaseAgent.train_one_epoch(agent)
            if agent.device.type == "cuda":
                torch.cuda.synchronize()

        return run

    wall, cpu = interleaved({name: epoch(agent) for name, agent in agents.items()}, args.repeats)
    first = next(iter(agents.values()))
    print(
        f"DCGAN training, {args.steps} steps of batch {args.batch_size} per repetition, ngf=ndf={args.ngf}, "
        f"{first.device}, {torch.get_num_threads()} torch threads, {args.repeats} interleaved repeats"
    )
    for name, agent in agents.items():
        images = args.steps * args.batch_size
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        start = time.perf_counter()
        agent.validate()
        valid = time.perf_counter() - start
        print(
            f"{name}: {images / w:8.1f} images/s (median wall {w:.3f} s per {images} images; CPU {c:.3f} s); "
            f"{agent.num_params():,} parameters; one validation (SWD, 64 images) {valid:.2f} s"
        )
        agent.finalize()


if __name__ == "__main__":
    main()
