"""A training run resumed from a checkpoint, and what it does where the config changed since (the drift policy);
``load_weights``: the models alone, for mode=test/predict/export.

The table below is the whole policy (docs/guarantees.md has it too; tests/test_resume_policy.py tests each row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from utils.config import repo_path
from utils.errors import UserError
from utils.run import checkpoint
from utils.training import distributed
from utils.training.schedules import uses_total

# Schedulers that compute the LR from their own args (max_lr, base_lr), not from the optimizer's lr.
OWN_LR = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)

# What a resume does when the config differs from the checkpoint's.
# mode=test/predict load the model weights only: every training row is ignored there.
#
# | what differs                            | a training run resumes ...                                         |
# |-----------------------------------------|--------------------------------------------------------------------|
# | agent, the model's tensors              | refused: one line, exit 2 (another exp_name, or resume=false)      |
# | optimizer type                          | refused: one line, exit 2                                          |
# | optimizer args (lr, momentum, ...)      | kept and applied; a new lr scales the restored LR schedule with it |
# | scheduler added, changed or removed     | restarted from the resumed step, from optimizer.args.lr; logged    |
# | run length, under a "total" schedule    | stretched: rebuilt for the new length, advanced to the resumed step|
# | monitor                                 | restarted: best.pth and early stopping start afresh; logged        |
# | ema_decay added                         | the average starts from the resumed weights                        |
# | batch_size, process count, num_workers  | kept: the rest of the epoch's sample order, each sample once       |
# | anything else (data, logging, limits)   | the new value applies                                              |


def check_matches(
    path: Path, state: dict, agent: str, config: dict, optimizer_keys: Iterable[str], training: bool = True
) -> None:
    """The checkpoint is of this agent and, when ``training`` resumes, of the config's optimizer types."""
    if state.get("agent") != agent:
        raise UserError(f"{path}: checkpoint of {state.get('agent')}, but the config's agent is {agent}")
    old = state.get("config", {})
    for key in optimizer_keys if training else ():
        if old.get(key) and old[key]["type"] != config[key]["type"]:
            raise UserError(
                f"{path}: checkpoint optimizer '{key}' is {old[key]['type']}, the config's is {config[key]['type']}; "
                "use another exp_name (or resume=false) to train with another optimizer"
            )


def scheduler_plan(state: dict, config: dict, keys: dict[str, str], total: int | None) -> dict[str, str]:
    """For each scheduler name (its config key in ``keys``): "restore" its saved state, "fresh" (added or changed
    since the checkpoint, or following a metric that ``monitor`` no longer names), "removed" (set to null), or
    "stretch" (a "total" that now stands for ``total`` steps)."""
    old = state.get("config", {})
    same_interval = old.get("scheduler_interval", "epoch") == config.get("scheduler_interval", "epoch")
    same_monitor = old.get("monitor", config["monitor"]) == config["monitor"]
    plan = {}
    for name, key in keys.items():
        spec, saved = config[key], name in (state.get("schedulers") or {})
        plateau = isinstance(spec, dict) and spec.get("type") == "ReduceLROnPlateau"
        if not spec:
            plan[name] = "removed" if old.get(key) else "none"
        elif not saved or old.get(key) != spec or not same_interval or (plateau and not same_monitor):
            plan[name] = "fresh"
        elif uses_total(spec) and state.get("schedule_total") != total:
            plan[name] = "stretch"
        else:
            plan[name] = "restore"
    return plan


def apply_changed_args(
    optimizers: dict[str, torch.optim.Optimizer],
    keys: dict[str, str],
    config: dict,
    state: dict,
    log: Callable,
    schedulers: Iterable[Any] = (),
    restored: Iterable[Any] = (),
) -> None:
    """Optimizer args changed since the checkpoint (say, a lower lr to fine-tune) win over its state. A new lr
    scales every param group's LR, and the ``restored`` schedulers of that optimizer (their base LRs), so that no
    later milestone undoes it; under a scheduler that sets the LR from its own args it has no effect (said so)."""
    old_config = state.get("config", {})
    for name, key in keys.items():
        old_args = (old_config.get(key) or {}).get("args", {})
        optimizer = optimizers[name]
        groups = optimizer.param_groups
        mine = [s for s in restored if s.optimizer is optimizer]
        built = [s for s in schedulers if s.optimizer is optimizer]
        for arg, value in config[key]["args"].items():
            old = old_args.get(arg)
            if old == value or arg not in groups[0]:
                continue
            owner = next((type(s).__name__ for s in built if isinstance(s, OWN_LR)), None)
            if arg == "lr" and owner:
                log(f"{key}.args.lr changed since the checkpoint, but {owner} sets the LR from its own args: no effect")
                continue
            if arg == "lr" and isinstance(old, (int, float)) and old > 0:  # groups keep their ratios (lr/10 ...)
                _scale_lr(groups, mine, value / old)
                scaled = " and the LR schedule restored with it" if mine else ""
                log(
                    f"{key}.args.lr changed since the checkpoint ({old} -> {value}): every param group's LR is "
                    f"scaled to it{scaled}; the LR is now {groups[0]['lr']:.6g}"
                )
                continue
            for group in groups:
                group[arg] = value
                if arg == "lr" and "initial_lr" in group:  # the base a restarted schedule starts from
                    group["initial_lr"] = value
            log(f"{key}.args.{arg} changed since the checkpoint: now {value}")


def _scale_lr(groups: list[dict], schedulers: list[Any], ratio: float) -> None:
    for group in groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    for scheduler in schedulers:  # a SequentialLR's phases keep base LRs of their own
        for phase in [scheduler, *getattr(scheduler, "_schedulers", [])]:
            if hasattr(phase, "base_lrs"):
                phase.base_lrs = [lr * ratio for lr in phase.base_lrs]
            if hasattr(phase, "_last_lr"):
                phase._last_lr = [lr * ratio for lr in phase._last_lr]


def resume(agent, path: Path) -> None:
    """Restore ``agent``'s whole training state from ``path``, applying the table above to what changed."""
    state = agent.read_checkpoint(path)
    config, log, schedules = agent.config, agent.recorder.info, agent.schedules
    check_matches(path, state, type(agent).__name__, config, agent.optimizer_keys.values())
    plan = scheduler_plan(state, config, schedules.keys(), schedules.total)
    restored = [name for name, action in plan.items() if action == "restore"]
    old_monitor = state.get("config", {}).get("monitor", config.monitor)
    foreign = path.resolve().parent != agent.checkpoint_dir.resolve()  # another run's: this one picks its own best
    if foreign:
        state["callbacks"].pop("early_stopping", None)
    checkpoint.Parts.of(agent).load_state_dict(path, state, restored)
    unclaimed = set(state["callbacks"]) - {key for key, _ in agent.callbacks.keyed()}
    if unclaimed:
        log(f"the checkpoint holds the state of callbacks this run has not (dropped): {', '.join(sorted(unclaimed))}")
    apply_changed_args(
        agent.optimizers,
        agent.optimizer_keys,
        config,
        state,
        log,
        schedules.built.values(),
        [schedules.built[name] for name in restored],
    )
    agent.epoch, agent.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
    agent.global_step, agent.optimizer_steps = state["global_step"], state.get("optimizer_steps", 0)
    agent.resume_samples = state.get("samples_in_epoch", 0) if agent.batch_in_epoch else 0
    _log_layout_change(agent, state)
    schedules.restart(plan, agent.optimizer_steps if schedules.per_step else agent.epoch, log)
    agent.monitor.best, agent.monitor.best_epoch = (None, None) if foreign else (state["best"], state["best_epoch"])
    agent.wall_before = state["wall_seconds"]
    if old_monitor != config.monitor:
        agent.monitor.reset()
        log(
            f"monitor changed since the checkpoint ({old_monitor} -> {config.monitor}): "
            "best.pth and early stopping start afresh"
        )
    agent.load_extra_state(state.get("extra", {}))
    rng_ranks = state.get("rng_ranks", [state["rng"]])
    if len(rng_ranks) == agent.world_size:
        checkpoint.set_rng_state(rng_ranks[agent.rank])
    else:  # saved by another number of processes: fresh streams per rank, still reproducible
        agent.seed_rank(step=agent.global_step)
    agent.recorder.truncate_metrics(after_epoch=agent.epoch)
    agent.resumed_from = path  # a tracked run continues only from the run's own last.pth (utils/run/loggers)
    log(f"resumed from {path} {agent.where()}, step {agent.global_step}")
    if agent.epoch >= agent.max_epochs() and not agent.batch_in_epoch:
        log(f"already trained ({agent.epoch} epochs, step {agent.global_step}): raise {agent.length_key} to continue")


def load_weights(agent, path: Path) -> None:
    """mode=test/predict/export: the models of ``path``, with their averaged weights where the run kept an EMA."""
    state = agent.read_checkpoint(path)
    check_matches(path, state, type(agent).__name__, agent.config, (), training=False)
    models = {name: agent.unwrap(m) for name, m in agent.models.items()}
    checkpoint.restore_models(path, state, models, averaged=True)
    agent.callbacks.load_state_dict(state.get("callbacks", {}), stage="on_test_end")  # a tracker: the run tested


def _log_layout_change(agent, state: dict) -> None:
    old = (state.get("world_size", 1), state.get("config", {}).get("batch_size"))
    new = (agent.world_size, agent.config.get("batch_size"))
    if agent.resume_samples and old != new:
        agent.recorder.info(
            f"resuming mid-epoch with {new[0]} process(es) x batch_size {new[1]} (saved with {old[0]} x {old[1]}): "
            f"the {agent.resume_samples} samples of epoch {agent.epoch + 1} already trained on are skipped"
        )


def start(agent) -> None:
    """A training run's start: from the checkpoint ``resume`` chooses, else from ``init_weights``' weights; data of
    other classes than the run's own checkpoint learnt is refused (Recorder.class_names)."""
    path = checkpoint.resume_path(agent.checkpoint_dir, agent.config.resume)  # rank 0's choice on every rank
    distributed.on_main(check_init_weights, agent, path)
    if path is not None:
        agent.load_checkpoint(path)
    elif agent.config.get("init_weights"):
        start_from_weights(agent, repo_path(agent.config.init_weights))
    own = checkpoint.is_own(path, agent.checkpoint_dir)
    distributed.on_main(agent.recorder.class_names, getattr(agent.data_loader, "class_names", None), own)


def check_init_weights(agent, path: Path | None) -> None:
    """init_weights only starts a run: not with resume=PATH, and a run that goes on from its own last.pth keeps the
    value it started with (a new one would be written to config.json and do nothing)."""
    given, resume = agent.config.get("init_weights"), agent.config.resume
    if given and isinstance(resume, str) and resume != "auto":
        raise UserError(
            "config: key 'init_weights': a run starts from resume's checkpoint or from these weights; keep one"
        )
    if not checkpoint.is_own(path, agent.checkpoint_dir):
        return
    earlier = checkpoint.earlier_config(agent.run_dir).get("init_weights")
    if (given and repo_path(given).resolve()) != (earlier and repo_path(earlier).resolve()):
        raise UserError(
            f"config: key 'init_weights': the run started from {earlier or 'no init_weights'} and goes on from its own "
            "last.pth (init_weights starts a run only): set it as it was, or use another exp_name for a new run"
        )


def start_from_weights(agent, path: Path) -> None:
    """init_weights: a new run's models start as ``path``'s (averaged where it kept an EMA); all else is new. A tensor
    the checkpoint lacks, or has in another shape (a new head: another number of classes), keeps its initial value."""
    if not distributed.on_main(path.is_file):  # rank 0's answer: read_checkpoint sends other ranks its copy
        raise UserError(f"config: key 'init_weights': checkpoint {path} not found")
    state = agent.read_checkpoint(path)
    for name, model in ((n, agent.unwrap(m)) for n, m in agent.models.items()):
        saved, own = checkpoint.model_weights(state, name, averaged=True) or {}, model.state_dict()
        fits = {k: v for k, v in saved.items() if k in own and v.shape == own[k].shape}
        if 2 * len(fits) < len(own):  # not a new head on the same body: another model
            other = state.get("agent") != type(agent).__name__
            whose = f"a {state.get('agent')} checkpoint" if other else "another configuration of this model"
            raise UserError(
                f"config: key 'init_weights': {len(fits)} of the {len(own)} tensors of model '{name}' fit {path} "
                f"({checkpoint.model_difference(saved, own)}): {whose}"
            )
        model.load_state_dict({**own, **fits})
        left = [
            f"{k} {tuple(saved[k].shape) if k in saved else 'absent'} -> {tuple(v.shape)}"
            for k, v in own.items()
            if k not in fits
        ]
        kept = f"; {len(left)} keep their initial values: {', '.join(left[:4])}{' ...' if len(left) > 4 else ''}"
        agent.recorder.info(f"init_weights: {len(fits)} tensors of model '{name}' from {path}{kept if left else ''}")
    agent.recorder.info(f"weights from {path} (epoch {state['epoch']}); epochs, optimizer and schedule start afresh")
