"""CelebA faces (or any folder of images) for a GAN: uint8 images, resized and centre-cropped, no labels.

Modes: ``folder`` reads every image under ``data_root/<image_folder>`` (flat or nested, any format
PIL reads; CelebA's aligned 178x218 JPEGs become image_size x image_size by resizing the shorter
side and cropping the centre); ``download`` fetches CelebA with torchvision into
``data_root/celeba/img_align_celeba`` when that folder is empty; ``random`` makes blurred coloured
blobs, a synthetic set a small GAN learns in seconds.

Splits: a held-out ``valid_fraction`` of the images, chosen by the seed, for the validation
metric (the sliced Wasserstein distance to generated images); the rest for training. The
held-out split is also the test split (``mode=test``): a GAN never trains on it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from datasets.common import fetched_root, held_out
from datasets.image_files import SKIP_BAD_FILES, ImageFiles, image_files
from utils.config import Key, relative_path
from utils.errors import UserError
from utils.training.data import TensorBatches, make_loader
from utils.training.seeding import derive_seed

CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
TORCHVISION_FOLDER = Path("celeba") / "img_align_celeba"  # where torchvision's CelebA puts the images


def how_to_get(folder: Path) -> str:
    return (
        f"Download img_align_celeba.zip by hand ({CELEBA_PAGE}, 'Align&Cropped Images', Google Drive or Baidu), "
        f"unzip it so that the JPEGs are in {folder}/, and run with data_mode=folder; "
        "or use data_mode=random (synthetic blobs) to try the pipeline now."
    )


def random_blobs(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """uint8 images (n, channels, size, size): one or two blurred blobs of random colour on a dark background.

    A learnable distribution (smooth shapes, a few colours' worth of variety) whose samples are easy to
    judge by eye, so that a short GAN run shows progress in its sample grids and in the SWD.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, "celeba", "random blobs"))
    coords = torch.linspace(0, 1, size)
    yy, xx = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)
    images = torch.full((n, channels, size, size), 0.08)
    for blob in range(2):
        present = (torch.rand(n, 1, 1, 1, generator=g) < 0.5) if blob else torch.ones(n, 1, 1, 1, dtype=torch.bool)
        cy, cx = (0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=g) for _ in range(2))
        sigma = 0.08 + 0.1 * torch.rand(n, 1, 1, 1, generator=g)
        colour = 0.3 + 0.7 * torch.rand(n, channels, 1, 1, generator=g)
        shape = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        images += present * colour * shape
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The shorter side resized to ``size`` (antialiased), then the centre size x size (DCGAN's CelebA)."""
    return F.center_crop(F.resize(image, size, antialias=True), size)


def download(root: Path) -> None:
    """Fetch CelebA with torchvision (Google Drive through gdown; checksums verified), unless its images are there."""
    folder = root / TORCHVISION_FOLDER
    if folder.is_dir() and any(folder.iterdir()):
        return
    from torchvision.datasets import CelebA

    try:
        CelebA(str(root), split="all", target_type=[], download=True)
    except Exception as e:  # noqa: BLE001 (gdown and Google Drive fail in many ways: quota, HTML pages, no gdown)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{folder}: could not download CelebA ({why}). {how_to_get(folder)}") from None


class CelebADataLoader:
    """train_loader, valid_loader and test_loader (the held-out split) of uint8 images (N, C, S, S)."""

    config_schema = {
        "image_size": Key(
            64, int, "images are resized (shorter side) and centre-cropped to this size", choices=(32, 64)
        ),
        "channels": Key(3, int, "image channels: 3 (RGB) or 1 (grey)", choices=(1, 3)),
        "image_folder": Key(
            str(TORCHVISION_FOLDER),
            str,
            "data_mode=folder: the images, flat or in sub-folders, under data_root (or an absolute path)",
            check=relative_path,
        ),
        "valid_fraction": Key(
            0.02, float, "images held out (chosen by the seed) for validation and mode=test", min=1e-6, max=0.5
        ),
        "random_size": Key(2048, int, "data_mode=random: number of synthetic images", min=2, max=200_000),
        "skip_bad_files": SKIP_BAD_FILES,
    }

    def __init__(self, config) -> None:
        if config.data_mode == "random":
            images = random_blobs(config.random_size, config.channels, config.image_size, config.seed)
            dataset: Dataset = TensorBatches(images)
        else:
            root = fetched_root(config, download)
            folder = root / (TORCHVISION_FOLDER if config.data_mode == "download" else config.image_folder)
            dataset = self._folder(folder, config, own=folder.resolve() != (root / TORCHVISION_FOLDER).resolve())
        train, valid = self.split(dataset, config.valid_fraction, config.seed)
        kwargs = {"seed": config.seed, "num_workers": config.num_workers}
        self.train_loader = make_loader(train, config.batch_size, train=True, **kwargs)
        self.valid_loader = make_loader(valid, config.batch_size, train=False, **kwargs)
        self.test_loader = self.valid_loader

    @staticmethod
    def _folder(folder: Path, config, own: bool) -> ImageFiles:
        """``own``: a folder of the user's images, not CelebA's (a missing one: no advice to download CelebA)."""
        size = config.image_size
        how = "Put your images there, or use data_mode=random." if own else how_to_get(folder)
        samples = [(path, 0) for path in image_files(folder, how)]  # no labels: class 0 for all
        # torchvision's functions, not v2.Compose: on images decoded at a reduced scale (min_size: CelebA's 178x218
        # JPEGs at 1/2, 89x109) its dispatch costs about half as much again as the resize (48 vs 34 us, at 67x82)
        transform = partial(resize_crop, size=size)
        mode = "RGB" if config.channels == 3 else "L"
        return ImageFiles(samples, mode, transform, skip_bad=config.skip_bad_files, min_size=size)

    @staticmethod
    def split(dataset: ImageFiles | TensorBatches, valid_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """(train, held-out): a random ``valid_fraction`` of the samples (at least one), fixed by ``seed``."""
        train, valid = held_out(len(dataset), valid_fraction, seed, "celeba")
        if isinstance(dataset, TensorBatches):  # stays batched: a few gathers per batch
            images = dataset.tensors[0]
            return TensorBatches(images[train]), TensorBatches(images[valid])
        return dataset.subset(train), dataset.subset(valid)
