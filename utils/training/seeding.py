"""Every seed in the project, from one formula, and the switch that seeds a whole process."""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

MAX_SEED = 2**31 - 1  # what every consumer accepts (gymnasium, numpy's legacy seed, torch)


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**31 - 1] fixed by ``parts`` (the run's seed first, then what it is for).

    A hash rather than arithmetic: no overflow for large seeds, and no two purposes (rank 1's
    stream, episode 7, sample 12 of epoch 3) that collide by a coincidence of sums.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (MAX_SEED + 1)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` enforces deterministic kernels.

    Enforced, not warned: an operation without a deterministic implementation then raises, naming
    itself. Without it, cuDNN picks the fastest convolution algorithms (``cudnn.benchmark``).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
