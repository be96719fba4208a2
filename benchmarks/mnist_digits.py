"""MNIST recipes compared on real handwritten digits that need no download: scikit-learn's 1,797.

    pip install scikit-learn   # only this script needs it
    python benchmarks/mnist_digits.py [--splits 5] [--recipes examples seed_adadelta ...]

Each 8x8 digit (UCI's optdigits, ink 0..16) is scaled to 0..255, upsampled to 20x20 and centred
in 28x28 as MNIST lays its digits out, then written as MNIST's IDX files. Each split holds out a
random 20% (360 digits) as the test file; the MnistAgent trains on the rest through
data_mode=folder (its last 137 images are the validation split that chooses best.pth), then
mode=test scores best.pth on the held-out digits. Every recipe sees the same splits. Accuracy is
the fraction of all held-out digits of all splits classified right.

It is a check that a recipe learns real handwriting at least as well as another, not a measure
of MNIST accuracy: 1,300 training digits give ~20 steps an epoch, where MNIST gives ~860.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/mnist_exp_0.json")
CLASSIC = ['optimizer={"type": "SGD", "args": {"lr": 0.01, "momentum": 0.5}}', "scheduler=null", "max_epoch=10"]
RECIPES = {
    "examples": [],  # the shipped config as it is
    "examples_shift2": ["shift=2"],
    "seed_adadelta": ["net=seed"],  # the shipped config before: the seed's net
    "seed_adadelta_shift2": ["net=seed", "shift=2"],
    "seed_classic_sgd": ["net=seed", *CLASSIC],  # pytorch/examples' original recipe
}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def digits_as_mnist() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (1797, 28, 28) images in MNIST's layout, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().mul(255 / 16).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(images, (4, 4, 4, 4)).squeeze(1).round().clamp(0, 255)
    return images.numpy().astype(np.uint8), digits.target


def write_split(root: Path, images: np.ndarray, labels: np.ndarray, split: int) -> None:
    test = np.random.default_rng(split).permutation(len(images))
    held, kept = test[:360], test[360:]
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, idx in (("train", kept), ("t10k", held)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[idx])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[idx])


def score(root: Path, exps: Path, name: str, overrides: list[str], threads: int) -> float:
    """Test accuracy of best.pth after training ``CONFIG`` with ``overrides`` on the split in ``root``."""
    common = [f"experiments_dir={exps}", f"exp_name={name}", "data_mode=folder", f"data_root={root}"]
    common += ["valid_size=137", f"torch_threads={threads}"]
    main.run(CONFIG, [*common, *overrides])
    main.run(CONFIG, [*common, *overrides, "mode=test"])
    return json.loads((exps / name / "summary.json").read_text())["test/accuracy"]


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    images, labels = digits_as_mnist()
    tmp = Path(tempfile.mkdtemp(prefix="digits-"))
    results: dict[str, list[float]] = {name: [] for name in args.recipes}
    for split in range(args.splits):
        write_split(tmp / f"data{split}", images, labels, split)
        for name in args.recipes:
            start = time.perf_counter()
            acc = score(tmp / f"data{split}", tmp / "exps", f"{name}_{split}", RECIPES[name], args.threads)
            results[name].append(acc)
            print(f"split {split} {name:<22} test accuracy {acc:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\n{args.splits} splits x 360 held-out digits:")
    for name, accs in results.items():
        wrong = round(sum(360 * (1 - a) for a in accs))
        spread = f"per split {min(accs):.3f}..{max(accs):.3f}"
        print(f"{name:<22} {np.mean(accs):.4f} ({wrong} of {360 * len(accs)} wrong; {spread})")


if __name__ == "__main__":
    main_()
