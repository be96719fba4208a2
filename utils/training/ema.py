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

from utils.training.callbacks import Callback


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


class EMACallback(Callback):
    """ema_decay: an average of each model registered with ``track``, moved after every optimizer step that
    updates the model; validation, best.pth and mode=test use the averages (``averaged``)."""

    state_key = "ema"

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.averages: dict[str, EMA] = {}

    def track(self, name: str, model: nn.Module) -> None:
        self.averages[name] = EMA(model, self.decay)

    def averaged(self, agent) -> contextlib.AbstractContextManager:
        return averaged_weights({n: agent.unwrap(agent.models[n]) for n in self.averages}, self.averages)

    def on_train_start(self, agent) -> None:
        """An average not updated yet starts from the weights training starts from: a resume's (ema_decay new
        since the checkpoint), or what the agent loaded after building the model (ERFNet's pretrained encoder)."""
        for name, average in self.averages.items():
            if average.updates == 0:
                average.module.load_state_dict(agent.unwrap(agent.models[name]).state_dict())

    def on_optimizer_step(self, agent, optimizer: torch.optim.Optimizer) -> None:
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name, average in self.averages.items():
            model = agent.unwrap(agent.models[name])
            if any(id(p) in params for p in model.parameters()):
                average.update(model)

    def state_dict(self) -> dict:
        return {name: average.state_dict() for name, average in self.averages.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, average in self.averages.items():
            if name in state:
                average.load_state_dict(state[name])
