"""An MNIST epoch through the `folder` data path vs the same loop over pre-loaded tensors.

    python benchmarks/data_path.py [--repeats 5]

Writes full-size MNIST-format IDX files (60000 + 10000 random images) to a temporary folder,
loads them with data_mode=folder, and trains one epoch of the MNIST agent; the baseline trains
the same model on the same batches, already normalised in memory and sliced from one tensor.
"""

from __future__ import annotations

import argparse
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import build_agent, epoch_in_memory, epoch_over, interleaved, plain_step, report


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="mnist-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    agent = build_agent("configs/mnist_exp_0.json", "data_mode=folder", f"data_root={root}", "net=seed")
    loader, step = agent.data_loader.train_loader, plain_step(agent)
    preloaded, n_batches = epoch_in_memory(loader, step)  # the baseline: the same batches, precomputed
    agent.model.train()

    runs = {"pre-loaded tensors": preloaded, "folder data path": epoch_over(loader, step)}
    wall, cpu = interleaved(runs, args.repeats)
    agent.finalize()
    print(f"one MNIST epoch ({n_batches} batches of 64), 1 torch thread, {args.repeats} interleaved repeats")
    for clock, times in (("wall", wall), ("CPU", cpu)):
        print(f"-- {clock} time per epoch")
        report(times, "pre-loaded tensors")


if __name__ == "__main__":
    main()
