"""Template data loader: replace the tensors below with your dataset.

Keep the three data modes: ``random`` (synthetic, as here), ``folder`` (your files under
data_root, e.g. torchvision.datasets.ImageFolder or numpy arrays) and ``download``.
Build every loader with ``make_loader``: that is what makes DDP and exact resume work.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.common import data_root, missing
from utils.config import Key
from utils.data import TensorBatches, make_loader
from utils.errors import UserError


class ExampleDataLoader:
    config_schema = {
        "in_features": Key(16, int, "length of each input vector", min=1),
        "num_classes": Key(4, int, "number of classes", min=2),
        "random_size": Key(512, int, "data_mode=random: number of synthetic samples", min=2),
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
            for name in ("x.npy", "y.npy"):
                if not (folder / name).exists():
                    raise missing(folder / name, "example data", "Save x.npy and y.npy there, or use data_mode=random.")
            x = torch.from_numpy(np.load(folder / "x.npy")).float()
            y = torch.from_numpy(np.load(folder / "y.npy")).long()
        else:
            raise UserError("config: key 'data_mode': the example data has nothing to download; use random or folder")
        n_valid = max(1, len(x) // 5)
        train = TensorBatches(x[n_valid:], y[n_valid:])
        valid = TensorBatches(x[:n_valid], y[:n_valid])
        self.train_loader = make_loader(train, config.batch_size, train=True, seed=config.seed)
        self.valid_loader = make_loader(valid, config.batch_size, train=False, seed=config.seed)
