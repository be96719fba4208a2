"""Checkpoints: atomic writes, safe loads, and the RNG state that makes a resume exact."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.config import repo_path
from utils.errors import UserError
from utils.training import distributed
from utils.training.schedules import uses_total

# Schedulers that compute the LR from their own args (max_lr, base_lr), not from the optimizer's lr.
OWN_LR = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with torch.save to a temp file beside ``path``, fsync, then rename over it.

    A crash or a full disk during the write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:
                # torch's zip writer reports a failed write (disk full) as a RuntimeError; the OSError
                # with the real reason is its context.
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; anything damaged is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if "Unsupported" in line or "Unpickler" in line]
        why = lines[0] if lines else type(e).__name__
        raise UserError(f"{path}: refused to load: it holds objects a plain checkpoint cannot ({why})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: damaged or not a checkpoint ({first})") from None
    if not isinstance(state, dict) or "models" not in state or "epoch" not in state:
        raise UserError(f"{path}: not a checkpoint of this template (no 'models'/'epoch' entries)")
    return state


def assemble(
    agent: str,
    counters: dict,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    scaler: torch.amp.GradScaler | None,
    ema: dict[str, Any],
    extra: dict,
    config: dict,
) -> dict:
    """A checkpoint: plain tensors and values only, so that ``torch.load(weights_only=True)`` reads it."""
    return {
        "format": 2,
        "agent": agent,
        **counters,
        "models": {k: m.state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": {k: e.state_dict() for k, e in ema.items()},
        "rng": rng_state(),
        "extra": extra,
        "config": config,
        "versions": versions(),
    }


def restore_models(path: Path, state: dict, models: dict[str, torch.nn.Module], averaged: bool = False) -> None:
    """Load each model's weights (``averaged``: its EMA where the run kept one); a mismatch is a UserError."""
    for name, model in models.items():
        weights = state["models"].get(name)
        if averaged and name in (state.get("ema") or {}):
            weights = state["ema"][name]["module"]
        try:
            if weights is None:
                raise KeyError(f"no model '{name}' in the checkpoint (it has {', '.join(state['models'])})")
            differs = model_difference(weights, model.state_dict())
            if differs:
                raise UserError(
                    f"{path}: model '{name}' differs from the checkpoint's: {differs}; a different model needs "
                    "its own run (a new exp_name), or this run's config as it was"
                )
            model.load_state_dict(weights)
        except (RuntimeError, KeyError) as e:
            raise UserError(f"{path}: model '{name}' does not match the config's model: {mismatch(e)}") from None


def model_difference(saved: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
    """'N tensors, e.g. features.0.weight (16, 1, 3, 3) -> (32, 1, 3, 3)': how the model differs from the saved
    weights (shapes, missing and extra tensors), or None when they fit."""
    shapes = [
        f"{k} {tuple(saved[k].shape)} -> {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and saved[k].shape != v.shape
    ]
    missing = [f"{k} not in the checkpoint" for k in own if k not in saved]
    extra = [f"{k} not in the model" for k in saved if k not in own]
    found = shapes + missing + extra
    if not found:
        return None
    return f"{len(found)} tensor{'s' if len(found) > 1 else ''} (checkpoint -> config), e.g. {found[0]}"


def restore(
    path: Path,
    state: dict,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    scaler: torch.amp.GradScaler | None,
    ema: dict[str, Any],
) -> None:
    """Load what ``assemble`` saved into the run's objects; what does not match is a UserError naming it."""
    restore_models(path, state, models)
    parts = (("optimizers", optimizers), ("schedulers", schedulers), ("ema", ema))
    for kind, objects in parts:
        for name, obj in objects.items():
            if kind == "ema" and name not in (state.get("ema") or {}):
                obj.module.load_state_dict(models[name].state_dict())  # ema_decay new to this run: from here on
                obj.updates = 0
                continue
            try:
                obj.load_state_dict(state[kind][name])
            except (ValueError, KeyError, RuntimeError) as e:
                raise UserError(f"{path}: {kind.rstrip('s')} '{name}' does not match the config's: {e}") from None
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temp file and a rename: ``dst`` is always whole."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def rng_state() -> dict:
    """Python, numpy, torch and CUDA RNG states as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_initialized():  # not is_available(): a CPU run on a GPU machine must not start CUDA
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_initialized():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def versions() -> dict:
    import sys

    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "numpy": str(np.__version__)}


def prune_epochs(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest epoch_N.pth files (0: keep all); newest by N, not by name."""
    if not keep:
        return
    files = [p for p in directory.glob("epoch_*.pth") if p.stem[6:].isdigit()]
    files.sort(key=lambda p: int(p.stem[6:]))
    for old in files[:-keep]:
        old.unlink()


def mismatch(error: Exception) -> str:
    """torch's load_state_dict error on one line: the first few missing, unexpected or mis-shaped keys."""
    lines = [line.strip().rstrip(".") for line in str(error).strip().splitlines()]
    detail = [line for line in lines[1:] if line] or lines[:1]
    text = "; ".join(detail)
    return text if len(text) <= 600 else text[:600] + " ..."


def resume_path(checkpoint_dir: Path, resume: str | bool) -> Path | None:
    """The checkpoint a training run continues from (``resume``: "auto", false or a path), decided by rank 0."""

    def choose() -> Path | None:
        last = checkpoint_dir / "last.pth"
        if resume == "auto":
            return last if last.exists() else None
        if resume is False:
            existing = sorted(checkpoint_dir.glob("*.pth"))
            if existing:
                raise UserError(
                    f"{existing[0]}: this experiment already has checkpoints and resume is false; "
                    "use resume=auto to continue it, or another exp_name for a fresh run"
                )
            return None
        path = repo_path(resume)
        if not path.is_file():
            raise UserError(f"config: key 'resume': checkpoint {path} not found")
        return path

    return _on_every_rank(choose, checkpoint_dir)


def test_path(checkpoint_dir: Path, resume: str | bool) -> Path:
    """The checkpoint mode=test/predict loads: ``resume`` when a path, else best.pth, else last.pth."""

    def choose() -> Path:
        if isinstance(resume, str) and resume != "auto":
            path = repo_path(resume)
        else:
            best, last = checkpoint_dir / "best.pth", checkpoint_dir / "last.pth"
            path = best if best.exists() or not last.exists() else last
        if not path.exists():
            raise UserError(f"{path}: no checkpoint to test; train first (mode=train) or set resume to a checkpoint")
        return path

    return _on_every_rank(choose, checkpoint_dir)


def _on_every_rank(choose: Callable[[], Path | None], checkpoint_dir: Path) -> Path | None:
    """Rank 0's choice on every rank (one in the run's checkpoints/ names each machine's own copy); a mistake
    rank 0 finds is raised on every rank, so that none is left waiting at a collective."""

    def named() -> Path | None:
        path = choose()
        if path is not None and path.parent.resolve() == checkpoint_dir.resolve():
            return Path(path.name)
        return path

    path = distributed.on_main(named)
    return path if path is None or path.is_absolute() else checkpoint_dir / path


def load_on_every_rank(path: str | Path, log: Callable[[str], None]) -> dict:
    """``load(path)``; under DDP every rank ends with rank 0's checkpoint: a rank that cannot see the file (no
    shared storage), or whose own copy is another (stale or damaged) one, gets rank 0's. Rank 0's mistake (no
    such file, a damaged one) is raised on every rank."""
    if distributed.world_size() == 1:
        return load(path)
    state, error = None, None
    try:
        state = load(path) if distributed.is_main() or Path(path).is_file() else None
    except UserError as e:
        error = str(e) if distributed.is_main() else None  # elsewhere: a damaged copy, replaced by rank 0's
    error = distributed.from_main(error)
    if error is not None:
        raise UserError(error)
    mine = None if state is None else [state.get(k) for k in ("epoch", "batch_in_epoch", "global_step", "wall_seconds")]
    (differs,) = distributed.any_rank(mine != distributed.from_main(mine))
    if not differs:
        return state
    if distributed.is_main():
        log(f"{path}: not the same on every machine; rank 0 sends its copy to the others")
    return distributed.from_main(state if distributed.is_main() else None)


# What a resume does when the config differs from the checkpoint's (the README's docs page has the same table).
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
