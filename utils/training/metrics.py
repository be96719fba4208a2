"""Validation metrics kept as sums, so that a sum over ranks gives the whole-dataset value; what training checks
for NaN (``LossSums``, ``all_finite``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from utils.config import did_you_mean
from utils.errors import UserError
from utils.training.distributed import all_reduce_sum


def all_finite(models: Iterable[torch.nn.Module]) -> bool:
    """Whether every weight of ``models`` is finite (one host sync)."""
    flags = [p.detach().isfinite().all() for m in models for p in m.parameters()]
    return not flags or bool(torch.stack(flags).all())


class Metric:
    """A metric whose state is one float64 tensor that adds up across batches and ranks.

    The state lives on the device of the first update, so that a GPU validation adds up without
    a host sync per batch; ``compute`` reads it once at the end.
    """

    def __init__(self, size: int | tuple[int, ...] = 2) -> None:
        self.state = torch.zeros(size, dtype=torch.float64)

    def _add(self, *values: torch.Tensor | float) -> None:
        """Add ``values`` to the state's first entries, on the device of the first tensor among them."""
        device = next((v.device for v in values if isinstance(v, torch.Tensor)), self.state.device)
        if self.state.device != device:
            self.state = self.state.to(device)
        for i, v in enumerate(values):
            self.state[i] += v.detach().double() if isinstance(v, torch.Tensor) else v

    def reduce(self) -> None:
        """Sum the state over all ranks (in place)."""
        all_reduce_sum(self.state)

    def result(self) -> float:
        """The value over every rank's batches (a collective: every rank calls it, in the same order)."""
        self.reduce()
        return self.compute()

    def ratio(self) -> float:
        """state[0] / state[1], or NaN when nothing was added."""
        total, count = self.state[:2].tolist()
        return total / count if count > 0 else float("nan")

    def compute(self) -> float:
        raise NotImplementedError


class Mean(Metric):
    """Sample-weighted mean of a per-batch value (e.g. the loss)."""

    def update(self, value: torch.Tensor | float, n: int) -> None:
        self._add(value * n, n)

    def compute(self) -> float:
        return self.ratio()


class Accuracy(Metric):
    """Top-k accuracy (top-1 by default) of logits (N, C, ...) against integer targets (N, ...)."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if self.k == 1:
            hits = logits.argmax(dim=1) == target
        else:
            hits = (logits.topk(self.k, dim=1).indices == target.unsqueeze(1)).any(dim=1)
        self._add(hits.sum(), target.numel())

    def compute(self) -> float:
        return self.ratio()


class LossSums:
    """Training losses summed on their device, read by the host now and then (not at every step).

    Holds the window since the last read and the epoch's total; a NaN anywhere in the window
    makes its sum NaN, so one read checks a whole window.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)  # window, epoch
        self.pending = self.epoch_count = 0

    def add(self, loss: torch.Tensor | None) -> None:
        if loss is not None:
            self.sums = self.sums + loss.detach().double()
            self.pending += 1

    def read(self) -> tuple[float, float | None]:
        """(the window's sum, the epoch's running mean or None): one host sync; the window starts again."""
        window, epoch = self.sums.tolist()
        self.sums = self.sums * torch.tensor([0.0, 1.0], dtype=self.sums.dtype, device=self.sums.device)
        self.epoch_count += self.pending
        self.pending = 0
        return window, epoch / self.epoch_count if self.epoch_count else None


class ConfusionMatrix(Metric):
    """Pixel counts (num_classes x num_classes; rows: ground truth, columns: prediction) over a whole set.

    ``compute`` is the mean IoU over the classes present in the ground truth or the prediction (a
    class that appears in neither has no IoU and is not averaged in). Pixels labelled
    ``ignore_index`` (VOC's object borders, padding) count nowhere.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__((num_classes, num_classes))
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count class scores (N, C, H, W) or predicted labels (N, H, W) against labels (N, H, W)."""
        if prediction.ndim == target.ndim + 1:
            prediction = prediction.argmax(dim=1)
        keep = target != self.ignore_index
        n = self.num_classes
        pairs = target[keep].long() * n + prediction[keep].long()
        counts = torch.bincount(pairs, minlength=n * n).reshape(n, n)
        if self.state.device != counts.device:
            self.state = self.state.to(counts.device)
        self.state += counts

    def class_iou(self) -> list[float]:
        """IoU of each class: true positives / (ground truth + predicted - true positives); NaN when absent."""
        m = self.state.cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan).tolist()

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (NaN when none was counted)."""
        m = self.state.cpu()
        total = float(m.sum())
        return float(m.diag().sum()) / total if total > 0 else float("nan")

    def compute(self) -> float:
        present = [v for v in self.class_iou() if v == v]  # NaN != NaN: absent classes drop out
        return sum(present) / len(present) if present else float("nan")


class Monitor:
    """The ``monitor`` key ("max valid/accuracy"): the metric that picks best.pth, and its best value so far."""

    def __init__(self, spec: str) -> None:
        self.mode, self.metric = spec.split()
        self.best: float | None = None
        self.best_epoch: int | None = None

    def check(self, names: list[str], agent: str) -> None:
        """The agent reports the monitored metric (``names``: what its validation reports)."""
        if self.metric not in names:
            raise UserError(
                f"config: key 'monitor': {agent} reports no metric '{self.metric}' "
                f"(it reports {', '.join(names)}){did_you_mean(self.metric, names)}"
            )

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Whether ``metrics`` hold a new best (a finite value better than every one before)."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None and (value <= self.best if self.mode == "max" else value >= self.best):
            return False
        self.best, self.best_epoch = value, epoch
        return True

    def reset(self) -> None:
        self.best = self.best_epoch = None
