"""Template data loader: replace the tensors below with your dataset.

Keep the three data modes: ``random`` (synthetic, as here), ``folder`` (your files under
data_root, e.g. torchvision.datasets.ImageFolder or numpy arrays) and ``download``.
Build every loader with ``make_loader``: that is what makes DDP and exact resume work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datasets.common import data_root, missing
from utils.config import Key
from utils.data import TensorBatches, make_loader
from utils.errors import UserError


class ExampleDataLoader:
    config_schema = {
        "in_features": Key(16, int, "length of each input vector", min=1, max=4096),
        "num_classes": Key(4, int, "number of classes", min=2, max=1000),
        "random_size": Key(512, int, "data_mode=random: number of synthetic samples", min=2, max=20_000),
    }

    def __init__(self, config) -> None:
        if config.data_mode == "random":
            # Gaussian blobs: a learnable signal, so a smoke run shows the loss falling.
            g = torch.Generator().manual_seed(config.seed)
            centers = torch.randn(config.num_classes, config.in_features, generator=g) * 2
            y = torch.randint(0, config.num_classes, (config.random_size,), generator=g)
            x = centers[y] + torch.randn(config.random_size, config.in_features, generator=g)
        elif config.data_mode == "folder":
            # Your data: here, data_root/example/{x,y}.npy (float features, integer labels).
            folder = data_root(config) / "example"
            x, y = (_load_npy(folder / name) for name in ("x.npy", "y.npy"))
            if x.ndim != 2 or x.shape[1] != config.in_features:
                raise UserError(f"{folder / 'x.npy'}: expected shape (N, {config.in_features}), got {tuple(x.shape)}")
            if y.shape != (len(x),):
                raise UserError(f"{folder / 'y.npy'}: expected {len(x)} labels, got shape {tuple(y.shape)}")
            if len(x) < 2:
                raise UserError(f"{folder / 'x.npy'}: needs at least 2 samples, holds {len(x)}")
            if y.min() < 0 or y.max() >= config.num_classes:
                raise UserError(
                    f"{folder / 'y.npy'}: labels must be in 0..{config.num_classes - 1}, "
                    f"found {int(y.min())}..{int(y.max())}"
                )
            x, y = x.float(), y.long()
        else:
            raise UserError("config: key 'data_mode': the example data has nothing to download; use random or folder")
        n_valid = max(1, len(x) // 5)
        train = TensorBatches(x[n_valid:], y[n_valid:])
        valid = TensorBatches(x[:n_valid], y[:n_valid])
        self.train_loader = make_loader(train, config.batch_size, train=True, seed=config.seed)
        self.valid_loader = make_loader(valid, config.batch_size, train=False, seed=config.seed)


def _load_npy(path: Path) -> torch.Tensor:
    """A numeric .npy file as a tensor; missing or malformed is a UserError naming the file."""
    if not path.exists():
        raise missing(path, "example data", "Save x.npy and y.npy there, or use data_mode=random.")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy file ({e})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{path}: expected numbers, got dtype {array.dtype}")
    return torch.from_numpy(array)
