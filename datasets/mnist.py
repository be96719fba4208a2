"""MNIST, held as uint8 tensors and normalised a batch at a time.

Modes: ``download`` (torchvision fetches the IDX files into data_root/MNIST/raw), ``folder``
(the same IDX files already there, plain or .gz, as torchvision lays them out) and ``random``.
Splits: train = the first 60000 - valid_size training images, valid = the last valid_size of
them, test = the 10000 t10k images. With ``shift`` > 0, each training image is moved by a random
offset of up to ``shift`` pixels each way (zeros, MNIST's background, fill in), drawn from torch's
RNG, which make_loader seeds per (seed, epoch, batch), so a resume is exact.
"""

from __future__ import annotations

import gzip
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from datasets.common import FOLD_KEYS, fetched_root, fold_split, hold_out, missing, random_crop, random_images
from datasets.image_files import ImageFiles, predict_files
from utils.config import Key
from utils.errors import UserError
from utils.training.data import TensorBatches, make_loader

MEAN, STD = 0.1307, 0.3081
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILES_TEXT = (
    "MNIST's four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte; .gz also works)"
)
TRY_NOW = "To try the pipeline now: add data_mode=random, or run configs/dqn_exp_0.json (needs no download)."
HOW = f"Put {FILES_TEXT} in that folder, or use data_mode=download on a machine with internet. {TRY_NOW}"
# data_mode=download failed: the user already asked for the download; the way out is the files by hand.
HOW_OFFLINE = f"Run again with internet, or copy {FILES_TEXT} into that folder and add data_mode=folder. {TRY_NOW}"
_IDX_DTYPE = {0x08: np.uint8}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST's format: magic 0x0000TTDD, DD dims as big-endian int32, data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPE:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (bad magic number). {HOW}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: IDX header truncated. {HOW}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"{path}: IDX file holds {len(data)} bytes, its header promises {expected} (truncated?)")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def _find(raw: Path, name: str) -> Path:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise missing(raw / name, "MNIST file", HOW)


def load_split(raw: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split, checked for consistency."""
    image_path, label_path = (_find(raw, name) for name in FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserError(f"{image_path}: expected images of 28x28, got shape {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path.name}")
    if len(labels) and labels.max() > 9:
        raise UserError(f"{label_path}: label {int(labels.max())} out of range 0..9")
    return images, labels.long()


def download(root: Path) -> None:
    """Fetch the IDX files with torchvision (which verifies their checksums)."""
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError):
        raise UserError(f"{root / 'MNIST' / 'raw'}: could not download MNIST (no internet?). {HOW_OFFLINE}") from None


def normalise(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28), standardised with MNIST's mean and std."""
    return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD), labels


def shift_and_normalise(images: torch.Tensor, labels: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each uint8 image (B, 28, 28) moved by up to ``pixels`` each way, then normalised."""
    return normalise(random_crop(images.unsqueeze(1), pixels).squeeze(1), labels)


class MnistDataLoader:
    """train_loader, valid_loader and test_loader over MNIST in the configured data_mode."""

    class_names = [str(digit) for digit in range(10)]
    # What the network's input is made of (export.json): grey 28x28 pixels / 255, standardised.
    preprocessing = {"colour_mode": "L", "size": [28, 28], "scale": 1 / 255, "mean": [MEAN], "std": [STD]}

    config_schema = {
        "valid_size": Key(
            5000, int, "training images held out for validation (best.pth is chosen on them)", min=1, max=59999
        ),
        "random_size": Key(6000, int, "data_mode=random: number of synthetic training images", min=2, max=200_000),
        "shift": Key(
            0, int, "training images: random shift of up to this many pixels each way (0: none)", min=0, max=8
        ),
        **FOLD_KEYS,
    }

    def __init__(self, config) -> None:
        if config.data_mode == "random":
            # One draw for all splits, so that they share the class patterns; test is valid_size images.
            n_train = config.random_size + config.valid_size
            images, labels = random_images(n_train + config.valid_size, (28, 28), 10, config.seed)
            train, test = (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])
        else:
            root = fetched_root(config, download)
            raw = root / "MNIST" / "raw"
            train, test = load_split(raw, "train"), load_split(raw, "test")
        folds = fold_split(config, len(train[0]))  # k-fold: the training file's parts (valid_size is not used)
        if folds is None:
            splits = hold_out(train, test, config.valid_size, "the training file")
        else:
            (t, v), (images, labels) = folds, train
            splits = {"train": (images[t], labels[t]), "valid": (images[v], labels[v]), "test": test}
        loaders = {}
        for name, (images, labels) in splits.items():
            augment = name == "train" and config.shift > 0
            dataset = TensorBatches(
                images, labels, transform=partial(shift_and_normalise, pixels=config.shift) if augment else normalise
            )
            loaders[name] = make_loader(
                dataset, config.batch_size, train=name == "train", seed=config.seed, num_workers=config.num_workers
            )
        self.train_loader, self.valid_loader, self.test_loader = loaders["train"], loaders["valid"], loaders["test"]
        self.batch_size, self.seed = config.batch_size, config.seed

    def predict_loader(self, given: str | None) -> tuple[list[Path], DataLoader]:
        """The image files of ``given`` (a file or a folder) and batches of them as validation's: any size and
        colour mode made grey 28x28 (MNIST's form), then ``normalise``d; the labels are the files' indices."""
        files = predict_files(given)
        samples = [(f, i) for i, f in enumerate(files)]
        images = ImageFiles(samples, mode="L", transform=v2.Resize((28, 28)), skip_bad=None)  # MNIST has no such key
        pixels = torch.stack([images[i][0][0] for i in range(len(images))])
        dataset = TensorBatches(pixels, torch.arange(len(files)), transform=normalise)
        return files, make_loader(dataset, self.batch_size, train=False, seed=self.seed)
