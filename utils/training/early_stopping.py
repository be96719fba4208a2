"""Early stopping: stop after ``patience`` validations in a row without improvement of a metric."""

from __future__ import annotations

import math

from utils.training.callbacks import Callback


class EarlyStopping(Callback):
    """Counts validations without improvement; ``step(value)`` says when to stop.

    As a callback (early_stop_patience) it reads ``metric`` after each validation and stops the run.

    An improvement is a value better than the best so far by more than ``min_delta`` (exactly
    ``min_delta`` does not count), larger for ``mode="max"``, smaller for ``"min"``. A non-finite
    value (NaN, inf) never counts as one. The first finite value is the first best.
    """

    state_key = "early_stopping"

    def __init__(
        self, patience: int, min_delta: float = 0.0, mode: str | None = None, metric: str | None = None
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be at least 0, got {min_delta}")
        if mode not in ("max", "min", None):
            raise ValueError(f"mode must be 'max', 'min' or None (the run's monitor), got {mode!r}")
        self.patience, self.min_delta, self.mode, self.metric = patience, min_delta, mode, metric
        self.best: float | None = None
        self.bad_count = 0  # validations in a row without improvement

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        gain = self.best - value if self.mode == "min" else value - self.best  # None: max until the run sets it
        return gain > self.min_delta

    def step(self, value: float) -> bool:
        """Record one validation's value; True when it is time to stop."""
        if self.improves(value):
            self.best, self.bad_count = value, 0
        else:
            self.bad_count += 1
        return self.bad_count >= self.patience

    def on_train_start(self, agent) -> None:
        self.mode, self.metric = self.mode or agent.monitor.mode, self.metric or agent.monitor.metric
        if self.bad_count >= self.patience:
            agent.stop_training, agent.status = True, "early stopped"
            agent.recorder.info(f"stopped early before (epoch {agent.epoch}): raise early_stop_patience to go on")

    def on_validation_end(self, agent, metrics: dict[str, float]) -> None:
        if self.metric not in metrics or not self.step(metrics[self.metric]):
            return
        agent.stop_training, agent.status = True, "early stopped"
        best = f"(best {self.best:.4g})" if self.best is not None else "(it was never a finite number)"
        agent.recorder.info(
            f"early stop at epoch {agent.epoch}: {self.metric} has not improved for {self.patience} validations {best}"
        )

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_count": self.bad_count, "monitor": f"{self.mode} {self.metric}"}

    def load_state_dict(self, state: dict) -> None:
        """The saved count, unless it counted another metric (``monitor`` changed: it starts afresh)."""
        if self.mode is None or " ".join(str(state.get("monitor")).split()) == f"{self.mode} {self.metric}":
            self.best, self.bad_count = state["best"], state["bad_count"]
