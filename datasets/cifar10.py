"""CIFAR-10, held as uint8 tensors; augmented and normalised a whole batch at a time.

Modes: ``download`` (torchvision fetches and checks the archive into data_root/cifar-10-batches-py),
``folder`` (the python-version pickle batches already there: data_batch_1..5, test_batch; read
without torchvision's md5 check, which accepts only the official files) and ``random``.
Splits: train = the first 50000 - valid_size training images, valid = the last valid_size of
them (best.pth is chosen on it), test = the 10000 images of test_batch (mode=test).
Training batches get the authors' augmentation: a random 32x32 crop of the image padded by 4
zero pixels, and a horizontal flip with probability 1/2, both drawn from torch's RNG (which
make_loader seeds per batch, so a resume is exact).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

from datasets.common import fetched_root, hold_out, missing, random_crop, random_images
from utils.config import Key
from utils.errors import UserError
from utils.training.data import TensorBatches, make_loader

MEAN = (0.4914, 0.4824, 0.4467)  # the CondenseNet authors' CIFAR-10 statistics
STD = (0.2471, 0.2435, 0.2616)
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
PADDING = 4
HOW = (
    "Put the python version of CIFAR-10 (cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    f"unpacked: {FOLDER}/data_batch_1..5, {FOLDER}/test_batch) under data_root, or use data_mode=download on a "
    "machine with internet. To try the pipeline now: data_mode=random."
)
# What a CIFAR-10 batch pickle may build: numpy arrays, nothing else (a foreign pickle cannot run code).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how python 3 writes bytes at pickle protocol 2
    ("numpy.core.numeric", "_frombuffer"),  # how numpy writes arrays at pickle protocol 5 (python 3's default)
    ("numpy._core.numeric", "_frombuffer"),
}
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy.core's or numpy._core's, whichever this numpy has
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # the same for protocol 5's array builder


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it holds a {module}.{name}")
        if module == "_codecs":
            return codecs.encode
        if name == "_frombuffer":
            return _FROMBUFFER
        return _RECONSTRUCT if name == "_reconstruct" else getattr(np, name)


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickle batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,)), checked."""
    if not path.is_file():
        raise missing(path, "CIFAR-10 batch file", HOW)
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
        raise UserError(f"{path}: not a readable CIFAR-10 batch ({e or type(e).__name__}). {HOW}") from None
    if not isinstance(batch, dict) or not {"data", "labels"} <= set(batch):
        raise UserError(f"{path}: not a CIFAR-10 batch (expected a dict with 'data' and 'labels'). {HOW}")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise UserError(f"{path}: 'data' must be uint8 rows of 3072 bytes (3x32x32), got {type(data).__name__} {shape}")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise UserError(f"{path}: {len(labels) if isinstance(labels, list) else 'no'} labels for {len(data)} images")
    labels = torch.tensor(labels, dtype=torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path}: label {int(labels.max() if labels.max() > 9 else labels.min())} out of range 0..9")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels


def load_folder(root: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train images, labels), (test images, labels) from the pickle batches under ``root``/cifar-10-batches-py."""
    folder = root / FOLDER
    if not folder.is_dir():
        raise missing(folder, "CIFAR-10 folder", HOW)
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return train, read_batch(folder / TEST_FILE)


def download(root: Path) -> None:
    """Fetch and unpack the python version with torchvision (which checks its md5)."""
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(str(root), train=True, download=True)
    except (RuntimeError, OSError):
        raise UserError(f"{root / FOLDER}: could not download CIFAR-10 (no internet?). {HOW}") from None


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, standardised per channel."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)


def crop_and_flip(images: torch.Tensor, padding: int = PADDING) -> torch.Tensor:
    """Each image: a random crop of its zero-padded self, then a horizontal flip with probability 1/2."""
    return random_crop(images, padding, flip=True)


def train_transform(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return normalise(crop_and_flip(images)), labels


def eval_transform(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return normalise(images), labels


class Cifar10DataLoader:
    """train_loader, valid_loader and test_loader over CIFAR-10 in the configured data_mode."""

    config_schema = {
        "valid_size": Key(
            5000, int, "training images held out for validation (the last ones; best.pth is chosen on them)", min=1
        ),
        "augment": Key(True, bool, "training batches: random crop (padding 4) and horizontal flip"),
        "random_size": Key(5000, int, "data_mode=random: number of synthetic training images", min=2, max=200_000),
        "random_image_size": Key(32, int, "data_mode=random: height and width of the synthetic images", min=1),
    }

    def __init__(self, config) -> None:
        if config.data_mode == "random":
            # One draw for all splits, so that they share the class patterns; test is valid_size images.
            n_train = config.random_size + config.valid_size
            size = config.random_image_size
            images, labels = random_images(n_train + config.valid_size, (3, size, size), 10, config.seed)
            train, test = (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])
        else:
            root = fetched_root(config, download)
            train, test = load_folder(root)
        splits = hold_out(train, test, config.valid_size, "the training batches")
        loaders = {}
        for name, (images, labels) in splits.items():
            augment = name == "train" and config.augment
            dataset = TensorBatches(images, labels, transform=train_transform if augment else eval_transform)
            loaders[name] = make_loader(
                dataset, config.batch_size, train=name == "train", seed=config.seed, num_workers=config.num_workers
            )
        self.train_loader, self.valid_loader, self.test_loader = loaders["train"], loaders["valid"], loaders["test"]
