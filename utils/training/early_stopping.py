"""Early stopping: stop after ``patience`` validations in a row without improvement of a metric."""

from __future__ import annotations

import math


class EarlyStopping:
    """Counts validations without improvement; ``step(value)`` says when to stop.

    An improvement is a value better than the best so far by more than ``min_delta`` (exactly
    ``min_delta`` does not count), larger for ``mode="max"``, smaller for ``"min"``. A non-finite
    value (NaN, inf) never counts as one. The first finite value is the first best.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, mode: str = "max") -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be at least 0, got {min_delta}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best: float | None = None
        self.bad_count = 0  # validations in a row without improvement

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        gain = value - self.best if self.mode == "max" else self.best - value
        return gain > self.min_delta

    def step(self, value: float) -> bool:
        """Record one validation's value; True when it is time to stop."""
        if self.improves(value):
            self.best, self.bad_count = value, 0
        else:
            self.bad_count += 1
        return self.bad_count >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_count": self.bad_count}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_count = state["best"], state["bad_count"]
