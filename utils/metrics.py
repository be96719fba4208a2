"""Validation metrics kept as sums, so that a sum over ranks gives the whole-dataset value."""

from __future__ import annotations

import torch

from utils.distributed import all_reduce_sum


class Metric:
    """A metric whose state is one float64 tensor that adds up across batches and ranks."""

    def __init__(self, size: int | tuple[int, ...] = 2) -> None:
        self.state = torch.zeros(size, dtype=torch.float64)

    def reduce(self) -> None:
        """Sum the state over all ranks (in place)."""
        all_reduce_sum(self.state)

    def compute(self) -> float:
        raise NotImplementedError


class Mean(Metric):
    """Sample-weighted mean of a per-batch value (e.g. the loss)."""

    def update(self, value: torch.Tensor | float, n: int) -> None:
        self.state[0] += float(value) * n
        self.state[1] += n

    def compute(self) -> float:
        return (self.state[0] / self.state[1]).item() if self.state[1] > 0 else float("nan")


class Accuracy(Metric):
    """Top-1 accuracy of logits (N, C, ...) against integer targets (N, ...)."""

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.state[0] += (logits.argmax(dim=1) == target).sum().item()
        self.state[1] += target.numel()

    def compute(self) -> float:
        return (self.state[0] / self.state[1]).item() if self.state[1] > 0 else float("nan")
