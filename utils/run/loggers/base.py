"""The Logger interface and the TensorBoard backend (the default)."""

from __future__ import annotations

from pathlib import Path

import torch

from utils.training.callbacks import Callback


class Logger(Callback):
    """A backend: ``log_scalars`` gets the Recorder's batched scalars, ``log_image`` its images (rank 0 only)."""

    @classmethod
    def build(cls, run_dir: Path, config) -> Logger:
        """The backend for a run (``config``: its resolved config, with the backend's keys)."""
        return cls(run_dir)

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
