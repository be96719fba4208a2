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
from common import build_agent, interleaved, report


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
    agent = build_agent("configs/mnist_exp_0.json", "data_mode=folder", f"data_root={root}")
    loader, model, optimizer, loss_fn = agent.data_loader.train_loader, agent.model, agent.optimizer, agent.loss

    # The baseline: every batch the folder path yields, precomputed once into memory.
    batches = list(loader)
    x_all, y_all = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    sizes = [len(b[1]) for b in batches]

    def step(x, y) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()

    def preloaded() -> None:
        model.train()
        start = 0
        for n in sizes:
            step(x_all[start : start + n], y_all[start : start + n])
            start += n

    def folder() -> None:
        model.train()
        for x, y in loader:
            step(x, y)

    wall, cpu = interleaved({"pre-loaded tensors": preloaded, "folder data path": folder}, args.repeats)
    agent.finalize()
    print(f"one MNIST epoch ({len(sizes)} batches of 64), 1 torch thread, {args.repeats} interleaved repeats")
    for clock, times in (("wall", wall), ("CPU", cpu)):
        print(f"-- {clock} time per epoch")
        report(times, "pre-loaded tensors")


if __name__ == "__main__":
    main()
