"""Checkpoints: atomic writes, safe loads, and the RNG state that makes a resume exact."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with torch.save to a temp file beside ``path``, fsync, then rename over it.

    A crash or a full disk during the write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:
                # torch's zip writer reports a failed write (disk full) as a RuntimeError; the OSError
                # with the real reason is its context.
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; anything damaged is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if "Unsupported" in line or "Unpickler" in line]
        why = lines[0] if lines else type(e).__name__
        raise UserError(f"{path}: refused to load: it holds objects a plain checkpoint cannot ({why})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: damaged or not a checkpoint ({first})") from None
    if not isinstance(state, dict) or "models" not in state or "epoch" not in state:
        raise UserError(f"{path}: not a checkpoint of this template (no 'models'/'epoch' entries)")
    return state


def rng_state() -> dict:
    """Python, numpy, torch and CUDA RNG states as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def versions() -> dict:
    import sys

    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "numpy": str(np.__version__)}


def prune_epochs(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest epoch_N.pth files (0: keep all); newest by N, not by name."""
    if not keep:
        return
    files = [p for p in directory.glob("epoch_*.pth") if p.stem[6:].isdigit()]
    files.sort(key=lambda p: int(p.stem[6:]))
    for old in files[:-keep]:
        old.unlink()


def mismatch(error: Exception) -> str:
    """torch's load_state_dict error on one line: the first few missing, unexpected or mis-shaped keys."""
    lines = [line.strip().rstrip(".") for line in str(error).strip().splitlines()]
    detail = [line for line in lines[1:] if line] or lines[:1]
    text = "; ".join(detail)
    return text if len(text) <= 600 else text[:600] + " ..."
