"""The template's image-folder path: an epoch decoding JPEGs vs the same loop over decoded tensors.

    python benchmarks/image_folder.py [--images 2000] [--repeats 5]

Writes ``--images`` random 64x64 JPEGs in 4 class folders, loads them with data_mode=folder
(resized to 32x32) and trains one epoch of the template agent, decoding in the main process
and in one loader worker; the baseline trains the same model on the same batches, decoded once
into memory. Also times building the dataset, which opens and checks every file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import build_agent, epoch_in_memory, epoch_over, interleaved, plain_step, report
from PIL import Image

from datasets.image_files import ImageFiles, class_folders
from utils.training.data import make_loader


def write_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("valid", max(4, n // 10))):
        for i in range(count):
            folder = root / "example" / split / f"class{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="images-"))
    write_images(root, args.images)
    agent = build_agent("configs/example_exp_0.json", "data_mode=folder", f"data_root={root}", "batch_size=64")
    loader = agent.data_loader.train_loader
    dataset = loader.dataset.dataset  # make_loader wraps it (EpochSeeded)
    with_worker = make_loader(dataset, 64, train=True, seed=1, num_workers=1)

    start = time.perf_counter()
    ImageFiles(class_folders(root / "example" / "train", "")[0], transform=dataset.transform)
    scan = time.perf_counter() - start

    step = plain_step(agent)
    decoded, _ = epoch_in_memory(loader, step)  # the baseline: every batch the folder path yields, decoded once
    agent.model.train()
    runs = {
        "decoded tensors": decoded,
        "folder, main process": epoch_over(loader, step),
        "folder, 1 worker": epoch_over(with_worker, step),
    }
    wall, _ = interleaved(runs, args.repeats)
    agent.finalize()
    print(f"{args.images} JPEGs 64x64 -> 32x32, batch 64, 1 torch thread, {args.repeats} interleaved repeats")
    print(f"building the checked dataset (open + verify every file): {scan:.3f} s")
    print("-- wall time per epoch")
    report(wall, "decoded tensors")


if __name__ == "__main__":
    main()
