"""ERFNet's speed: forward images/s, one training step, and the VOC data path's share of an epoch.

    python benchmarks/erfnet.py [--size 512] [--batch 8] [--images 64] [--repeats 3] [--threads N]

1. forward throughput (eval mode, no grad) at size x size, batch 1 and ``--batch``;
2. one training step (forward, backward, Adam) at ``--batch`` crops of size x size;
3. an epoch of ``--images`` VOC-like samples (random 500x375 JPEGs and palette PNG masks written
   in the VOCdevkit layout, loaded with data_mode=folder: decode, random scale, crop, flip) with
   the decoding in the main process and in 1 loader worker, against the same batches held in
   memory; the data path's share is 1 - in-memory / through-the-loader.
Runs on the CPU unless ``--device cuda``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import build_agent, epoch_in_memory, epoch_over, interleaved, plain_step, report
from PIL import Image

from datasets.voc import uint8_batch
from graphs.models.erfnet import ERFNet
from utils.examples.palette import VOC_PALETTE
from utils.training.data import make_loader


def write_voc(root: Path, n: int) -> None:
    """n training and 2 validation samples in data_root/VOCdevkit/VOC2012, 500x375 as most VOC photos are."""
    tree = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = {"train": [f"t{i:05d}" for i in range(n)], "val": ["v00000", "v00001"]}
    for split, names in ids.items():
        for name in names:
            mask = np.zeros((375, 500), dtype=np.uint8)
            top, left = rng.integers(0, 200), rng.integers(0, 300)
            mask[top : top + 150, left : left + 180] = rng.integers(1, 21)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(VOC_PALETTE.flatten().tolist())
            png.save(tree / "SegmentationClass" / f"{name}.png")
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(
                tree / "JPEGImages" / f"{name}.jpg", quality=90
            )
        (tree / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def seconds(fn, repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512, help="input height and width (a multiple of 8)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=64, help="training samples in the data-path epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    print(f"device {device}, {torch.get_num_threads()} torch threads, {args.repeats} repeats (medians)")

    model = ERFNet(21).to(device).eval()
    for batch in sorted({1, args.batch}):
        x = torch.randn(batch, 3, args.size, args.size, device=device)

        def forward(x=x) -> None:
            with torch.no_grad():
                model(x)
            sync()

        t = seconds(forward, args.repeats)
        print(f"forward {args.size}x{args.size}, batch {batch}: {t * 1000:.1f} ms, {batch / t:.2f} images/s")

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 21, (args.batch, args.size, args.size), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y, ignore_index=255).backward()
        optimizer.step()
        sync()

    print(f"training step, batch {args.batch} at {args.size}x{args.size}: {seconds(step, args.repeats):.3f} s")

    root = Path(tempfile.mkdtemp(prefix="voc-"))
    write_voc(root, args.images)
    agent = build_agent(
        "configs/erfnet_exp_0.json",
        "data_mode=folder",
        f"data_root={root}",
        f"crop_size={args.size}",
        f"batch_size={args.batch}",
        "num_workers=0",
        "class_weights=null",
        f"device={args.device}",
    )
    loader = agent.data_loader.train_loader
    with_worker = make_loader(loader.dataset.dataset, args.batch, True, seed=1, num_workers=1, collate_fn=uint8_batch)
    train_step = plain_step(agent)

    def on_device(step_fn):  # uint8 batches standardised on the device, as the agent does
        return lambda x, y: step_fn(*agent.to_device((x, y)))

    in_memory, n = epoch_in_memory(loader, on_device(train_step))
    agent.model.train()
    runs = {
        "in memory": in_memory,
        "loader, main process": epoch_over(loader, on_device(train_step)),
        "loader, 1 worker": epoch_over(with_worker, on_device(train_step)),
    }
    wall, _ = interleaved(runs, args.repeats)
    agent.finalize()
    print(f"-- an epoch of {args.images} samples ({n} batches of {args.batch}), wall seconds")
    report(wall, "in memory")
    base = statistics.median(wall["in memory"])
    for name in ("loader, main process", "loader, 1 worker"):
        share = 1 - base / statistics.median(wall[name])
        print(f"data path's share of the epoch, {name}: {share:.1%}")


if __name__ == "__main__":
    main()
