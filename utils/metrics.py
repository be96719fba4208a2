"""Validation metrics kept as sums, so that a sum over ranks gives the whole-dataset value."""

from __future__ import annotations

import torch

from utils.distributed import all_reduce_sum


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
    """Top-1 accuracy of logits (N, C, ...) against integer targets (N, ...)."""

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self._add((logits.argmax(dim=1) == target).sum(), target.numel())

    def compute(self) -> float:
        return self.ratio()


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
