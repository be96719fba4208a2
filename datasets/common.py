"""What every dataset class shares: the data_root path, missing-data errors, learnable random data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from utils.config import Key, repo_path
from utils.errors import UserError
from utils.training import distributed
from utils.training.seeding import derive_seed


def data_root(config) -> Path:
    """``config.data_root`` as a path; relative paths are taken from the repository root."""
    return repo_path(config.data_root)


def fetched_root(config, download: Callable[[Path], None]) -> Path:
    """The data root; with ``data_mode: download``, ``download(root)`` has run there (rank 0 first: one
    download, not one per process)."""
    root = data_root(config)
    if config.data_mode == "download":
        with distributed.main_first():
            download(root)
    return root


def held_out(n: int, fraction: float, seed: int, name: str, key: str = "valid_fraction") -> tuple[list, list]:
    """(training indices, held-out indices) of ``n`` samples: a ``fraction`` (at least one), fixed by ``seed``."""
    n_valid = max(1, round(fraction * n))
    if n_valid >= n:
        raise UserError(
            f"config: key '{key}': {fraction} of {n} images leaves none for training (add images or lower {key})"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, name, "held-out")))
    return sorted(order[n_valid:].tolist()), sorted(order[:n_valid].tolist())


FOLD_KEYS = {
    "folds": Key(
        None,
        int,
        "k-fold cross-validation: the training data cut into this many parts (shuffled by the seed), one of "
        "which validates; null: the usual valid split",
        min=2,
        max=100,
        nullable=True,
    ),
    "fold": Key(0, int, "with folds: the part that validates, 0 to folds - 1", min=0, max=99),
}


def fold_split(config, n: int) -> tuple[list[int], list[int]] | None:
    """(training, validating) indices of fold ``config.fold`` of the ``n`` training samples; None without folds."""
    folds, fold = config.get("folds"), config.get("fold", 0)
    if folds is None:
        if fold:
            raise UserError(f"config: key 'fold': goes with folds (the number of parts), got fold={fold} alone")
        return None
    if fold >= folds:
        raise UserError(f"config: key 'fold': expected 0 to {folds - 1} (folds is {folds}), got {fold}")
    if n < folds:
        raise UserError(f"config: key 'folds': {folds} parts of {n} training samples leave some empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(config.seed, "folds")))
    parts = order.tensor_split(folds)
    train = torch.cat([part for i, part in enumerate(parts) if i != fold])
    return sorted(train.tolist()), sorted(parts[fold].tolist())


def missing(path: Path, what: str, how: str) -> UserError:
    return UserError(f"{path}: {what} not found. {how}")


def random_images(n: int, shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class is recoverable (a fixed pattern per class plus noise), and labels.

    Random mode is for offline smoke runs; a learnable signal also lets tests check that a
    model trains at all (accuracy above chance) without any download.
    """
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand((num_classes, *shape), generator=g) * 255
    labels = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randn((n, *shape), generator=g) * 100
    images = (patterns[labels] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def hold_out(train: tuple[torch.Tensor, torch.Tensor], test: tuple, valid_size: int, what: str) -> dict[str, tuple]:
    """Train, valid (the last ``valid_size`` training samples) and test splits of tensor pairs; ``what`` names
    the training data in the error when nothing would be left to train on."""
    n_train = len(train[0]) - valid_size
    if n_train < 1:
        raise UserError(
            f"config: key 'valid_size': {valid_size} leaves no training images ({what} holds {len(train[0])})"
        )
    return {
        "train": (train[0][:n_train], train[1][:n_train]),
        "valid": (train[0][n_train:], train[1][n_train:]),
        "test": test,
    }


def random_crop(images: torch.Tensor, padding: int, flip: bool = False) -> torch.Tensor:
    """Each image of (B, C, H, W): a random H x W window of its zero-padded self (a shift of up to ``padding``
    pixels each way), then, with ``flip``, a horizontal flip with probability 1/2.

    One gather for the whole batch; offsets and flips are drawn from torch's RNG (which make_loader seeds
    per batch, so a resume is exact).
    """
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b, 1))
    left = torch.randint(0, 2 * padding + 1, (b, 1))
    columns = torch.arange(w)
    if flip:  # a flip reads columns backwards
        columns = torch.where(torch.rand(b, 1) < 0.5, torch.arange(w - 1, -1, -1), columns)
    rows = torch.arange(h) + top
    return padded[
        torch.arange(b).view(b, 1, 1, 1),
        torch.arange(c).view(1, c, 1, 1),
        rows.view(b, 1, h, 1),
        (columns + left).view(b, 1, 1, w),
    ]
