"""Gradient accumulation (``accumulate_grad_batches``): groups of k batches whose summed gradients make one
optimizer step, the step one batch k times larger would make."""

from __future__ import annotations

import torch

from utils.errors import UserError


class Accumulation:
    """Where the current batch stands in its accumulation group; BaseAgent.optimize steps on a group's last."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.index, self.size = 0, 1  # this batch in its group, the group's size (an epoch's last may be short)
        self.calls: dict[int, int] = {}  # optimize() calls per optimizer in this batch

    def start(self, batch: int, first: int, end: int) -> None:
        """Batch ``batch`` of the epoch, whose batches run to ``end``; groups count from ``first``, the first
        batch trained in this epoch (a mid-epoch resume starts a group there)."""
        start = first + (batch - first) // self.every * self.every
        self.index, self.size, self.calls = batch - start, min(self.every, end - start), {}

    def end_epoch(self) -> None:
        """Outside an epoch's batches (an agent's own optimize calls) every call steps."""
        self.index, self.size = 0, 1

    @property
    def last(self) -> bool:
        """The group's last batch: gradients are synchronised and the optimizer steps."""
        return self.index == self.size - 1

    def scale(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, agent: str) -> torch.Tensor:
        """``loss`` over the group's size: size batches of B give the gradient of one batch of size x B."""
        if self.size == 1:
            return loss
        calls = self.calls[id(optimizer)] = self.calls.get(id(optimizer), 0) + 1
        if calls > 1:
            raise UserError(
                f"config: key 'accumulate_grad_batches': {agent} steps one optimizer several times per batch, "
                "which gradient accumulation cannot sum; set accumulate_grad_batches=1"
            )
        return loss / self.size
