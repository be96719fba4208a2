"""LR schedules from the config: one torch scheduler, or a list of them run one after the other.

``scheduler`` is null, one ``{"type", "args"}`` naming a ``torch.optim.lr_scheduler`` class, or a
list of them (torch's SequentialLR). Every phase of a list but the last says how many scheduler
steps it lasts (``"steps"``); the last runs to the end of the run. An argument given as the string
``"total"`` is its phase's length: the whole run for a single scheduler, the run minus the earlier
phases for the last phase of a list, its ``steps`` for an earlier phase. A 5-step warm-up, then
cosine to zero over the rest of the run::

    [{"type": "LinearLR", "args": {"start_factor": 0.1, "total_iters": 5}, "steps": 5},
     {"type": "CosineAnnealingLR", "args": {"T_max": "total"}}]

Lengths count ``scheduler.step()`` calls. After the run's last call the LR is the schedule's end
value (cosine's ``eta_min``, 0 for PolynomialLR); the last optimizer step used the LR before it.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import torch

from utils.config import REQUIRED, Key, build_torch_object, check_args, torch_class, validate
from utils.errors import UserError

MODULE = "torch.optim.lr_scheduler"
TOTAL = "total"


def uses_total(spec: dict | list | None) -> bool:
    """Whether a scheduler key has an argument "total" (its length follows the run's)."""
    phases = spec if isinstance(spec, list) else [spec] if spec else []
    return any(value == TOTAL for phase in phases for value in phase.get("args", {}).values())


_PROBE_TOTAL = 100  # the run length the config check builds with (the real one is known only later)

_SINGLE = {
    "type": Key(REQUIRED, str, "lr scheduler class name"),
    "args": Key({}, dict, f"constructor arguments; '{TOTAL}' stands for the phase's length"),
}
_PHASE = {**_SINGLE, "steps": Key(None, int, "scheduler steps this phase lasts (not on the last)", min=1)}


def scheduler_key(default: dict | list | None = None, doc: str = "") -> Key:
    """The config Key of a schedule; loading builds it on a probe parameter and steps it once."""

    def check(value: dict | list, where: str, source: str) -> None:
        phases = _phases(value, where, source)
        total = sum(spec.get("steps") or 0 for spec, _ in phases) + _PROBE_TOTAL
        for (spec, at), length in zip(phases, _lengths(phases, total, source), strict=True):
            param = torch.nn.Parameter(torch.zeros(1))
            param.grad = torch.ones(1)
            optimizer = torch.optim.SGD([param], lr=0.1)
            scheduler = build_torch_object(MODULE, _resolve(spec, length, at, source), optimizer, at, source)
            try:  # one step: some bad values (a string step_size) only fail when used
                optimizer.step()
                plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
                scheduler.step(1.0) if plateau else scheduler.step()
            except Exception as e:  # noqa: BLE001 (any failure here comes from the user's args)
                raise UserError(f"{source}: key '{at}.args': {spec['type']} fails with {spec['args']}: {e}") from None

    doc = doc or (
        f"null, a {MODULE} {{type, args}}, or a list of them run in turn (each but the last with 'steps'); "
        f"an arg '{TOTAL}' is the phase's length"
    )
    return Key(default, (dict, list), doc, nullable=default is None, check=check)


def build_scheduler(
    spec: dict | list,
    optimizer: torch.optim.Optimizer,
    total: int,
    where: str = "scheduler",
    source: str = "config",
    per_step: bool = False,
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The scheduler ``spec`` describes, for a run of ``total`` scheduler steps (SequentialLR for a list);
    ``per_step``: stepped after every optimizer step, which ReduceLROnPlateau (it follows a metric) cannot be."""
    phases = _phases(spec, where, source)
    if per_step and any(phase["type"] == "ReduceLROnPlateau" for phase, _ in phases):
        raise UserError(
            f"{source}: key 'scheduler_interval': ReduceLROnPlateau steps on the validation metric; "
            "use scheduler_interval=epoch with it"
        )
    lengths = _lengths(phases, total, source)
    schedulers = [
        build_torch_object(MODULE, _resolve(phase, length, at, source), optimizer, at, source)
        for (phase, at), length in zip(phases, lengths, strict=True)
    ]
    if not isinstance(spec, list):
        return schedulers[0]
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=list(accumulate(lengths[:-1])))


class Schedules:
    """The run's LR schedulers: registered with their config key, built when training starts (a "total" needs the
    run's length), stepped after every epoch or optimizer step, restarted when a resume's config changed them."""

    def __init__(self, config) -> None:
        self.config = config
        self.per_step = config.get("scheduler_interval") == "step"
        self.specs: dict[str, tuple[torch.optim.Optimizer, str]] = {}  # name -> (optimizer, config key)
        self.built: dict[str, Any] = {}
        self.total: int | None = None  # what "total" in the schedulers' args stood for

    def register(self, name: str, optimizer: torch.optim.Optimizer, key: str) -> None:
        self.specs[name] = (optimizer, key)  # null too: a resume sees a scheduler removed

    def keys(self) -> dict[str, str]:
        return {name: key for name, (_, key) in self.specs.items()}

    def build(self, total: int) -> None:
        """Build the registered schedulers for a run of ``total`` scheduler steps."""
        for name, (optimizer, key) in self.specs.items():
            if self.config[key]:
                self.built[name] = build_scheduler(self.config[key], optimizer, total, key, per_step=self.per_step)
                self.total = total

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.per_step:
            for scheduler in self.built.values():
                if scheduler.optimizer is optimizer:
                    scheduler.step()

    def after_epoch(self, metrics: dict[str, float], monitor: str, optimizer_stepped: bool) -> None:
        """Step the per-epoch schedulers (ReduceLROnPlateau with the ``monitor`` metric, when validated)."""
        if self.per_step:
            return
        for scheduler in self.built.values():
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if monitor in metrics:
                    scheduler.step(metrics[monitor])
                continue
            with warnings.catch_warnings():
                if optimizer_stepped:  # torch cannot know that a resumed run's optimizer stepped before
                    warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
                scheduler.step()

    def restart(self, plan: dict[str, str], done: int, log: Callable[[str], None]) -> None:
        """After a resume (``done`` scheduler steps): schedulers added or changed since the checkpoint start afresh
        (a "total" is the steps left); a "total" schedule for another run length is rebuilt and advanced."""
        for name, action in plan.items():
            if action in ("restore", "none"):
                continue
            optimizer, key = self.specs[name]
            before = optimizer.param_groups[0]["lr"]
            for group in optimizer.param_groups:  # back to the schedule's base LR (optimizer.args.lr)
                group["lr"] = group.pop("initial_lr", group["lr"])
            if action == "removed":
                lr = optimizer.param_groups[0]["lr"]
                log(f"{key} removed since the checkpoint: the optimizer's LR from here on ({lr:.6g})")
                continue
            total = self.total if action == "stretch" else max(1, self.total - done)
            scheduler = build_scheduler(self.config[key], optimizer, total, key, per_step=self.per_step)
            with warnings.catch_warnings():  # advancing a scheduler alone is what torch's order check warns of
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(done if action == "stretch" else 0):
                    scheduler.step()
            self.built[name] = scheduler
            what = (
                f"rebuilt for the run's new length ({total} steps) and advanced to step {done}"
                if action == "stretch"
                else f"added or changed since the checkpoint: it starts afresh here ({total} steps left)"
            )
            log(f"{key} {what}; LR {before:.6g} -> {optimizer.param_groups[0]['lr']:.6g}")


def _phases(value: dict | list, where: str, source: str) -> list[tuple[dict, str]]:
    """Each phase checked (keys, class, argument names) with defaults filled in, and its key path."""
    if isinstance(value, dict):
        phases = [(validate(value, _SINGLE, source, prefix=f"{where}."), where)]
    elif not value:
        raise UserError(f"{source}: key '{where}': expected a scheduler or a non-empty list of them, got []")
    else:
        phases = []
        for i, item in enumerate(value):
            at = f"{where}.{i}"  # as an override types it: scheduler.0.steps=5
            if not isinstance(item, dict):
                raise UserError(f"{source}: key '{at}': expected an object with 'type', 'args', 'steps', got {item!r}")
            phase = validate(item, _PHASE, source, prefix=f"{at}.")
            last = i == len(value) - 1
            if last and phase["steps"] is not None:
                raise UserError(f"{source}: key '{at}.steps': the last phase runs to the end; remove 'steps'")
            if not last and phase["steps"] is None:
                raise UserError(
                    f"{source}: missing required key '{at}.steps' (how many scheduler steps this phase lasts; "
                    "only the last phase runs to the end)"
                )
            phases.append((phase, at))
    module = importlib.import_module(MODULE)
    for phase, at in phases:
        cls = torch_class(module, "lr scheduler", at, source, phase["type"])
        if isinstance(value, list) and cls is torch.optim.lr_scheduler.ReduceLROnPlateau:
            raise UserError(
                f"{source}: key '{at}.type': ReduceLROnPlateau follows a metric, not the step count, "
                "so it cannot be a phase of a list; use it alone"
            )
        check_args(cls, phase["args"], at, source)
    return phases


def _lengths(phases: list[tuple[dict, str]], total: int, source: str) -> list[int]:
    """Each phase's length in scheduler steps: its ``steps``, the last one the rest of ``total``."""
    lengths = [phase["steps"] for phase, _ in phases[:-1]]
    for (_, at), done in zip(phases, accumulate(lengths), strict=False):
        if done >= total:
            raise UserError(
                f"{source}: key '{at}.steps': the phases up to this one last {done} scheduler steps, but the "
                f"whole run has {total}, and the last phase needs at least one"
            )
    return [*lengths, total - sum(lengths)]


def _resolve(phase: dict, length: int, at: str, source: str) -> dict:
    """``phase`` with every argument given as "total" replaced by ``length``."""
    args = {}
    for name, value in phase["args"].items():
        if value == TOTAL:
            if length < 1:
                raise UserError(f"{source}: key '{at}.args.{name}': '{TOTAL}' is {length} scheduler steps in this run")
            value = length
        args[name] = value
    return {"type": phase["type"], "args": args}
