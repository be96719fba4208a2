"""Three image data paths per image, each against bare decoding of the same files with torchvision.io.

    python benchmarks/image_paths.py [--images 200] [--repeats 5]

Writes, in their datasets' on-disk layouts, JPEGs that compress like photographs (smooth shapes plus a little
noise, quality 90): VOC (500x375 images with palette-PNG masks, ERFNet's training path: decode both, random
scale, crop to 512 with padding, flip; standardised later, on the device), CelebA (178x218 faces, DCGAN's path:
decode at 1/2 scale, resize to 64, centre crop) and the template's class folders (256x256 decoded at 1/8 scale:
32x32, scaled to [0, 1]; datasets/image_files.py's ``min_size``); and ERFNet's with ``augment_on: "device"``,
where the loader only decodes (the agent augments on the GPU). Each path runs through its dataset class and
``make_loader`` (batch 8, the main process, as a worker would), so the cost counted is everything from the file
to the collated batch; "1 worker" is the same loader with a worker process, its CPU time and this process's:
also the batch's trip through shared memory and the worker's start, once an epoch. The baseline of each is
``torchvision.io.decode_image`` of the same files (and, for VOC, of the masks too), read from the
page cache; PIL's decode is shown beside it. Paths and baselines alternate, ``--repeats`` rounds; the
ratio is the median over rounds of (path / baseline in the same round), on CPU time, 1 torch thread.
"decode + transform" is decoding and the dataset's transform alone, without the Dataset and the loader:
the floor of a path that transforms so.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import REPO
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import decode_image, read_file

import main
from datasets.celeba import CelebADataLoader
from datasets.example import ExampleDataLoader
from datasets.image_files import ImageFiles
from datasets.voc import TREE, VocDataLoader
from utils.examples.palette import VOC_PALETTE


def photo_like(rng: np.random.Generator, height: int, width: int, classes: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (H, W, 3) of a few coloured shapes on a gradient with mild noise, and its label mask (H, W)."""
    ys, xs = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
        mask[((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1] = rng.integers(1, classes)
    colours = VOC_PALETTE[:classes].numpy().astype(np.float32)
    image = colours[mask] * 0.7 + (ys / height * 80)[..., None] + rng.normal(0, 6, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8), mask


def write_voc(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    tree = root / TREE
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    palette = VOC_PALETTE.flatten().tolist()
    for i in ids:
        image, mask = photo_like(rng, 375, 500)
        Image.fromarray(image).save(tree / "JPEGImages" / f"{i}.jpg", quality=90)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(tree / "SegmentationClass" / f"{i}.png")
    for split in ("train", "val"):
        (tree / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return [p for i in ids for p in (tree / "JPEGImages" / f"{i}.jpg", tree / "SegmentationClass" / f"{i}.png")]


def write_jpegs(folder: Path, n: int, height: int, width: int, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    for path in paths:
        Image.fromarray(photo_like(rng, height, width)[0]).save(path, quality=90)
    return paths


def loader_of(config: str, data_class: type, *overrides: str):
    """The training loader of ``data_class`` built from ``config`` with ``overrides``."""
    cfg, _ = main.load_config(str(REPO / config), ["data_mode=folder", "num_workers=0", "batch_size=8", *overrides])
    return data_class(cfg).train_loader


def epoch(loader) -> Callable[[], None]:
    def run() -> None:
        for _ in loader:
            pass

    return run


def decode_all(paths: list[Path]) -> Callable[[], None]:
    def run() -> None:
        for path in paths:
            decode_image(read_file(str(path)))

    return run


def decode_and_transform(paths: list[Path], dataset: ImageFiles, pairs: bool) -> Callable[[], None]:
    """The dataset's own decoding (torchvision.io, or simplejpeg at a reduced scale) and its transform, without
    the Dataset's checks and the loader around them: the floor of the path."""

    def run() -> None:
        if not pairs:
            for path in paths:
                dataset.transform(dataset._image(path))
            return
        for image, mask in zip(paths[::2], paths[1::2], strict=True):
            dataset.transform(tv_tensors.Image(dataset._image(image)), tv_tensors.Mask(dataset._mask(mask)))

    return run


def pil_all(paths: list[Path]) -> Callable[[], None]:
    def run() -> None:
        for path in paths:
            with Image.open(path) as image:
                np.asarray(image.convert("RGB") if image.mode not in ("P", "L") else image)

    return run


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (a loader's workers end with their epoch)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root, rng, n = Path(tempfile.mkdtemp(prefix="image-paths-")), np.random.default_rng(0), args.images
    voc_files = write_voc(root, n, rng)
    celeba_files = write_jpegs(root / "celeba", n, 218, 178, rng)
    example_files = [
        p for c in range(4) for p in write_jpegs(root / "example" / "train" / f"c{c}", n // 4, 256, 256, rng)
    ]
    write_jpegs(root / "example" / "valid" / "c0", 1, 256, 256, rng)
    for c in range(1, 4):
        write_jpegs(root / "example" / "valid" / f"c{c}", 1, 256, 256, rng)
    common = [f"data_root={root}", "experiments_dir=/nonexistent"]
    paths = {
        "VOC (ERFNet train)": (
            loader_of("configs/erfnet_exp_0.json", VocDataLoader, *common),
            voc_files,
        ),
        "VOC, augment_on=device": (
            loader_of("configs/erfnet_exp_0.json", VocDataLoader, *common, "augment_on=device"),
            voc_files,
        ),
        "CelebA (DCGAN)": (
            loader_of(
                "configs/dcgan_exp_0.json", CelebADataLoader, *common, "image_folder=celeba", "valid_fraction=0.01"
            ),
            celeba_files,
        ),
        "template folder": (loader_of("configs/example_exp_0.json", ExampleDataLoader, *common), example_files),
    }
    workers = {  # the same paths with a loader worker: the batch's trip to this process counted too
        "VOC (ERFNet train)": loader_of("configs/erfnet_exp_0.json", VocDataLoader, *common, "num_workers=1"),
        "CelebA (DCGAN)": loader_of(
            "configs/dcgan_exp_0.json",
            CelebADataLoader,
            *common,
            "image_folder=celeba",
            "valid_fraction=0.01",
            "num_workers=1",
        ),
        "template folder": loader_of("configs/example_exp_0.json", ExampleDataLoader, *common, "num_workers=1"),
    }
    for name, (loader, files) in paths.items():
        per_sample = 2 if name.startswith("VOC") else 1  # VOC: an image and its mask
        runs = {"decode_image": decode_all(files), "PIL decode": pil_all(files), "data path": epoch(loader)}
        if name in workers:
            runs["data path, 1 worker"] = epoch(workers[name])
        dataset = loader.dataset.dataset
        if getattr(dataset, "transform", None) is not None:  # augment_on=device: the loader only decodes
            runs["decode + transform"] = decode_and_transform(files, dataset, pairs=per_sample == 2)
        counts = dict.fromkeys(runs, len(files) // per_sample)
        counts["data path"] = counts["data path, 1 worker"] = len(loader.dataset)
        times: dict[str, list[float]] = {k: [] for k in runs}
        epoch(loader)()  # warm: page cache, first-call costs
        for r in range(args.repeats):
            names = list(runs)
            for k in names[r % len(names) :] + names[: r % len(names)]:  # rotate: a drift hits all alike
                start = cpu_seconds()
                runs[k]()
                times[k].append((cpu_seconds() - start) / counts[k])
        base = times["decode_image"]
        print(
            f"{name}: {counts['data path']} samples; ms per sample (CPU, median): "
            + ", ".join(f"{k} {statistics.median(v) * 1e3:.3f}" for k, v in times.items())
        )
        ratios = {k: statistics.median(a / b for a, b in zip(v, base, strict=True)) for k, v in times.items()}
        print("    paired ratio to decode_image: " + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items()))


if __name__ == "__main__":
    main_()
