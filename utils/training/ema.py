"""An exponential moving average of a model's weights (the "EMA model" of timm and Lightning).

After each optimizer step ``update(model)`` moves every floating-point parameter of the average
toward the model's: ``avg = decay * avg + (1 - decay) * param``. Buffers (batch-norm running
statistics, counters) and non-floating parameters are copied from the model as they are, so the
average normalises its inputs the way the model does.

With ``warmup=True`` the n-th update (n = 0, 1, ...) uses ``min(decay, (1 + n) / (10 + n))``
instead (TensorFlow's ExponentialMovingAverage with ``num_updates``), so that early averages are
not dominated by the random initial weights; the default is the plain average above.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Holds ``module``, an averaged copy of a model (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step toward ``model`` (the plain module, not a DDP or compiled wrapper)."""
        weight = 1.0 - self.current_decay()
        averaged, current = [], []
        for mine, theirs in zip(self.module.parameters(), model.parameters(), strict=True):
            if mine.is_floating_point() or mine.is_complex():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        """Plain tensors and an int (``torch.load(weights_only=True)`` reads it)."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


@contextlib.contextmanager
def averaged_weights(models: dict[str, nn.Module], averages: dict[str, EMA]) -> Iterator[None]:
    """``models`` (plain modules) hold their averages' weights inside; their own weights come back after."""
    saved = {}
    for name, average in averages.items():
        saved[name] = {k: v.clone() for k, v in models[name].state_dict().items()}
        models[name].load_state_dict(average.module.state_dict())
    try:
        yield
    finally:
        for name, state in saved.items():
            models[name].load_state_dict(state)


def update_stepped(optimizer: torch.optim.Optimizer, models: dict[str, nn.Module], averages: dict[str, EMA]) -> None:
    """Update the averages of the models (plain modules) whose parameters ``optimizer`` has just stepped."""
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, average in averages.items():
        if any(id(p) in params for p in models[name].parameters()):
            average.update(models[name])
