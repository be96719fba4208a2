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
from common import build_agent, interleaved, report
from PIL import Image

from datasets.image_files import ImageFiles, class_folders
from utils.data import make_loader


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
    loader, model, optimizer, loss_fn = agent.data_loader.train_loader, agent.model, agent.optimizer, agent.loss
    dataset = loader.dataset
    with_worker = make_loader(dataset, 64, train=True, seed=1, num_workers=1)

    start = time.perf_counter()
    ImageFiles(class_folders(root / "example" / "train", "")[0], transform=dataset.transform)
    scan = time.perf_counter() - start

    batches = list(loader)  # the baseline: every batch the folder path yields, decoded once
    x_all, y_all = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    sizes = [len(b[1]) for b in batches]

    def step(x, y) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()

    def decoded() -> None:
        start = 0
        for n in sizes:
            step(x_all[start : start + n], y_all[start : start + n])
            start += n

    def folder_main() -> None:
        for x, y in loader:
            step(x, y)

    def folder_worker() -> None:
        for x, y in with_worker:
            step(x, y)

    model.train()
    runs = {"decoded tensors": decoded, "folder, main process": folder_main, "folder, 1 worker": folder_worker}
    wall, _ = interleaved(runs, args.repeats)
    agent.finalize()
    print(f"{args.images} JPEGs 64x64 -> 32x32, batch 64, 1 torch thread, {args.repeats} interleaved repeats")
    print(f"building the checked dataset (open + verify every file): {scan:.3f} s")
    print("-- wall time per epoch")
    report(wall, "decoded tensors")


if __name__ == "__main__":
    main()
