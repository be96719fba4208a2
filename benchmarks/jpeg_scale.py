"""Reduced-scale JPEG decoding (``ImageFiles(min_size=...)``, datasets/image_files.py) on real photos.

    python benchmarks/jpeg_scale.py [--repeats 7]

The photos are sample JPEGs that matplotlib and pygame (both in requirements.txt) install: a portrait and
webcam and street shots, 200x150 to 512x600. Two paths, each through ``ImageFiles`` with and without
``min_size``: the template's (a whole photo resized to 32x32) and DCGAN's CelebA (178x218 crops of the photos
saved at quality 95, resized to 64 and centre-cropped). For each: CPU time per image against decoding whole
(median over alternating rounds, 1 torch thread), and how far the network's input moves: the mean absolute
difference of the two inputs in levels of 255, averaged over the photos and for the worst photo.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from common import REPO  # noqa: F401 (puts the repository on the path)
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datasets.image_files import ImageFiles

PHOTOS = {
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"],
    "pygame": [
        f"docs/generated/_images/{name}.jpg"
        for name in ("camera_rgb", "camera_average", "camera_background", "intro_blade", "intro_freedom")
    ],
}


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The CelebA example's resize and crop, written here so that a project without the examples keeps this file."""
    return F.center_crop(F.resize(image, size, antialias=True), size)


def photos() -> list[Path]:
    """The sample photos of the packages above (found without importing them)."""
    found = []
    for package, files in PHOTOS.items():
        root = Path(importlib.util.find_spec(package).origin).parent
        found += [root / f for f in files if (root / f).exists()]
    return found


def crops(sources: list[Path], folder: Path) -> list[Path]:
    """CelebA-sized (178x218) crops of the photos large enough, at two places each, saved as JPEG (quality 95)."""
    out = []
    for source in sources:
        with Image.open(source) as image:
            w, h = image.size
            if w < 178 or h < 218:
                continue
            for k, (x, y) in enumerate([(0, 0), (w - 178, h - 218)]):
                out.append(folder / f"{source.stem}_{k}.jpg")
                image.convert("RGB").crop((x, y, x + 178, y + 218)).save(out[-1], quality=95)
    return out


def compare(files: list[Path], transform, size: int, repeats: int) -> tuple[float, float, float]:
    """(time with min_size / time decoding whole, mean difference, worst photo's difference)."""
    samples = [(f, 0) for f in files]
    whole, reduced = ImageFiles(samples, transform=transform), ImageFiles(samples, transform=transform, min_size=size)
    times: dict[str, list[float]] = {"whole": [], "reduced": []}
    for r in range(repeats):
        for name in ("whole", "reduced") if r % 2 else ("reduced", "whole"):
            data = whole if name == "whole" else reduced
            start = time.process_time()
            for i in range(len(data)):
                data[i]
            times[name].append(time.process_time() - start)
    diffs = [(whole[i][0].float() - reduced[i][0].float()).abs().mean().item() for i in range(len(files))]
    ratio = statistics.median(a / b for a, b in zip(times["reduced"], times["whole"], strict=True))
    return ratio, statistics.mean(diffs), max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources = photos()
    paths = {
        "template, whole photos to 32x32": (sources, v2.Resize((32, 32)), 32),
        "CelebA, 178x218 crops to 64x64": (crops(sources, Path(tempfile.mkdtemp())), partial(resize_crop, size=64), 64),
    }
    for name, (files, transform, size) in paths.items():
        ratio, mean, worst = compare(files, transform, size, args.repeats)
        print(
            f"{name} ({len(files)} JPEGs): time {ratio:.2f}x of decoding whole; "
            f"input {mean:.2f} levels of 255 from it on average (worst photo {worst:.2f})"
        )


if __name__ == "__main__":
    main()
