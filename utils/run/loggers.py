"""Loggers: the backends the Recorder writes a run's scalars and images to (metrics.csv and summary.json are the
Recorder's own, always written). Each is a callback too, so a backend can open and close a tracked run with
training and keep its state (a tracked run's id) in the checkpoint. The ``loggers`` key names them."""

from __future__ import annotations

from pathlib import Path

import torch

from utils.config import did_you_mean
from utils.errors import UserError
from utils.training.callbacks import Callback


class Logger(Callback):
    """A backend: ``log_scalars`` gets the Recorder's batched scalars, ``log_image`` its images (rank 0 only)."""

    def log_scalars(self, rows: list[tuple[dict[str, float], int]]) -> None:
        """Scalars as (values by name, global step) rows, a few seconds' worth at a time."""

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A uint8 (C, H, W) image on the CPU."""

    def close(self) -> None:
        """Write what is pending; called once, when the Recorder closes (also after a failure)."""


class TensorBoardLogger(Logger):
    """TensorBoard event files under the run's summaries/ (tensorboardX, imported when first written)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "summaries"
        self._writer = None

    @property
    def writer(self):  # -> tensorboardX.SummaryWriter
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.path))
        return self._writer

    def log_scalars(self, rows: list[tuple[dict[str, float], int]]) -> None:
        for values, step in rows:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# The ``loggers`` key's names -> the backend's class, built with the run directory.
LOGGERS = {"tensorboard": TensorBoardLogger}


def check_loggers(value: list, where: str, source: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(
            f"{source}: key '{where}': expected a list of logger names ({', '.join(LOGGERS)}), got {value!r}"
        )
    for name in value:
        if name not in LOGGERS:
            hint = did_you_mean(name, list(LOGGERS))
            raise UserError(f"{source}: key '{where}': no logger '{name}' (there are {', '.join(LOGGERS)}){hint}")
    if len(set(value)) < len(value):
        raise UserError(f"{source}: key '{where}': a logger named twice in {value!r}")


def build_loggers(names: list[str], run_dir: Path) -> list[Logger]:
    return [LOGGERS[name](run_dir) for name in names]
