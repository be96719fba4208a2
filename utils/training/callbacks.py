"""Callbacks: what cuts across the training loop, behind one small extension point.

Early stopping, the EMA of the weights, the profiler, the loggers, a sweep's pruner and a user's own hooks are
callbacks (in the spirit of Lightning's callbacks and mmengine's hooks, without priorities): BaseAgent calls each
stage on every callback in list order, and a callback reads or changes the agent (``agent.stop_training``,
``agent.status``, ``agent.recorder``). Overrides stay for what an agent computes (``train_step``, ``validate``).

The stages, and nothing else, in the order a run meets them:

=====================================  ==========================================================================
``on_train_start(agent)``              training starts, after a resume (mode=train only)
``on_train_batch_end(agent, logs)``    after each ``train_step``; ``logs`` is what it returned (device tensors)
``on_optimizer_step(agent, opt)``      after each optimizer update (fewer than batches with accumulation)
``on_validation_end(agent, metrics)``  after an epoch's validation (not called when none was due)
``on_epoch_end(agent, metrics)``       every epoch, last, just before its checkpoint, which holds every state
``on_train_end(agent)``                training ended: finished, stopped early, interrupted or failed
``on_test_end(agent, metrics)``        mode=test evaluated a checkpoint, which gave this callback its state
=====================================  ==========================================================================

A callback with state returns it from ``state_dict`` (tensors and plain values); the checkpoint keeps it under
``state_key`` and a resume hands it back to ``load_state_dict``. A user's callback comes from the config:
``"callbacks": [{"type": "package.module.Class", "args": {...}}]``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from utils.config import did_you_mean
from utils.errors import UserError

STAGES = (
    "on_train_start",
    "on_train_batch_end",
    "on_optimizer_step",
    "on_validation_end",
    "on_epoch_end",
    "on_train_end",
    "on_test_end",
)


class Callback:
    """A hook into BaseAgent's loop; override the stages it needs."""

    state_key: str | None = None  # where the checkpoint keeps its state (None: the class name)

    def on_train_start(self, agent) -> None: ...

    def on_train_batch_end(self, agent, logs: dict) -> None: ...

    def on_optimizer_step(self, agent, optimizer) -> None: ...

    def on_validation_end(self, agent, metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, agent, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, agent) -> None: ...

    def on_test_end(self, agent, metrics: dict[str, float]) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class Callbacks:
    """The run's callbacks in order; ``call(stage, ...)`` runs only those that override the stage."""

    def __init__(self, callbacks: list[Callback] = ()) -> None:
        self.items: list[Callback] = []
        self._stages: dict[str, list[Callable]] = {stage: [] for stage in STAGES}
        for callback in callbacks:
            self.append(callback)

    def append(self, callback: Callback) -> None:
        self.items.append(callback)
        for stage in STAGES:  # a stage left as Callback's no-op costs the loop nothing
            if getattr(type(callback), stage) is not getattr(Callback, stage):
                self._stages[stage].append(getattr(callback, stage))

    def call(self, stage: str, agent, *args: Any) -> None:
        for hook in self._stages[stage]:
            hook(agent, *args)

    def find(self, kind: type) -> Any:
        """The first callback of type ``kind``, or None."""
        return next((c for c in self.items if isinstance(c, kind)), None)

    def state_dict(self) -> dict[str, dict]:
        return {key: state for key, c in self.keyed() if (state := c.state_dict())}

    def load_state_dict(self, states: dict[str, dict], stage: str | None = None) -> None:
        """Each callback's saved state (a callback new to this run keeps its fresh state); ``stage``: only to the
        callbacks that have it (mode=test: those with an ``on_test_end``, a tracker's run id)."""
        for key, callback in self.keyed():
            if key in states and (stage is None or getattr(callback, stage) in self._stages[stage]):
                callback.load_state_dict(states[key])

    def keyed(self) -> list[tuple[str, Callback]]:
        """(state_key, callback) pairs; a second callback of one key gets '#2' appended, and so on."""
        seen: dict[str, int] = {}
        pairs = []
        for callback in self.items:
            key = callback.state_key or type(callback).__name__
            seen[key] = seen.get(key, 0) + 1
            pairs.append((key if seen[key] == 1 else f"{key}#{seen[key]}", callback))
        return pairs


class AfterValidation(Callback):
    """Calls ``fn(epoch, metrics)`` at the end of each validated epoch; True stops training (a sweep's pruner)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], bool]) -> None:
        self.fn = fn

    def on_epoch_end(self, agent, metrics: dict[str, float]) -> None:
        if metrics and self.fn(agent.epoch, metrics):
            agent.stop_training = True


def check_callbacks(value: Any, where: str, source: str) -> None:
    """The ``callbacks`` key: a list of ``{"type": "package.module.Class", "args": {...}}``."""
    if not isinstance(value, list):
        raise UserError(f'{source}: key \'{where}\': expected a list of {{"type", "args"}} objects, got {value!r}')
    for i, spec in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or "." not in spec["type"].strip("."):
            raise UserError(
                f'{source}: key \'{here}\': expected {{"type": "package.module.Class", "args": {{...}}}}, got {spec!r}'
            )
        unknown = [k for k in spec if k not in ("type", "args")]
        if unknown:
            raise UserError(f"{source}: key '{here}.{unknown[0]}': unknown key{did_you_mean(unknown[0], ['args'])}")
        if not isinstance(spec.get("args", {}), dict):
            raise UserError(f"{source}: key '{here}.args': expected an object of arguments, got {spec['args']!r}")


def build_callback(spec: dict, where: str) -> Callback:
    """Import ``spec["type"]`` (only now: a callback's module is loaded when a config names it) and build it; its
    state is kept under its type and arguments, so that two of one class never take each other's on resume."""
    module_name, _, class_name = spec["type"].replace(":", ".").rpartition(".")  # pkg.module:Class, as agents
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(f"config: key '{where}.type': no module '{e.name}' (from {spec['type']!r})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        names = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Callback)]
        found = "no class" if cls is None else "not a Callback subclass (utils/training/callbacks.py)"
        raise UserError(f"config: key '{where}.type': {spec['type']} is {found}{did_you_mean(class_name, names)}")
    try:
        callback = cls(**spec.get("args", {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"config: key '{where}.args': {spec['type']}: {e}") from None
    if cls.state_key is None:
        callback.state_key = f"{cls.__name__}{json.dumps(spec.get('args', {}), sort_keys=True)}"
    return callback
