"""Checkpoints: what an agent's holds (``agent_state``, ``Parts``) and its save by rank 0 (``save``), atomic writes,
safe loads, and the RNG state that makes a resume exact."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.config import repo_path, to_plain
from utils.errors import TrainingStopped, UserError
from utils.training import distributed
from utils.training.data import ShardedSampler

FORMAT = 3  # 3: callbacks' states under "callbacks" (2 had "ema" and "early_stopping" at the top level)


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with torch.save to a temp file beside ``path``, fsync, then rename over it.

    A crash or a full disk during the write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # open(): the umask's mode, as every other file
    try:
        with open(tmp, "wb") as f:
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
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        text = " ".join(str(e).split())
        sentences = re.split(r"(?<=\.) ", text)
        crafted = next((x.split("error: ")[-1] for x in sentences if "GLOBAL" in x), None)  # objects, not bad bytes
        if crafted:
            raise UserError(
                f"{path}: refused to load: it holds objects a plain checkpoint cannot ({crafted})"
            ) from None
        bad = re.search(r"Unsupported operand \d+", text)  # weights_only's unpickler on a byte that is no pickle's
        why = bad[0] if bad else str(e).strip().split("\n")[0] or type(e).__name__
        others = sorted(p.name for p in path.parent.glob("*.pth") if p != path)  # a run's other checkpoints
        advice = f"; its folder also has {', '.join(others)}: resume=<one of them> goes on from there" if others else ""
        raise UserError(f"{path}: damaged or not a checkpoint ({why}){advice}") from None
    if not isinstance(state, dict) or "models" not in state or "epoch" not in state:
        raise UserError(f"{path}: not a checkpoint of this template (no 'models'/'epoch' entries)")
    if state.get("format", 2) < 3:  # format 2 kept the callbacks' states at the top level
        state["callbacks"] = {k: state.pop(k) for k in ("ema", "early_stopping") if state.get(k)}
        if "early_stopping" in state["callbacks"]:  # the metric it counted
            state["callbacks"]["early_stopping"]["monitor"] = " ".join(
                str(state.get("config", {}).get("monitor")).split()
            )
    return state


@dataclass
class Parts:
    """The objects a checkpoint saves and a resume restores, gathered once: plain models (unwrapped from DDP and
    torch.compile), optimizers, schedulers, the fp16 grad scaler and the callbacks (EMA, early stopping, ...)."""

    models: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    callbacks: Any  # utils/training/callbacks.Callbacks
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def of(cls, agent) -> Parts:
        """An agent's parts, its models unwrapped."""
        models = {name: agent.unwrap(m) for name, m in agent.models.items()}
        return cls(models, agent.optimizers, agent.schedules.built, agent.callbacks, agent.scaler)

    def state_dict(self) -> dict:
        """Plain tensors and values only, so that ``torch.load(weights_only=True)`` reads them."""
        return {
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": self.callbacks.state_dict(),
        }

    def load_state_dict(self, path: Path, state: dict, schedulers: Iterable[str]) -> None:
        """Restore every part (of the schedulers, those named); what does not match is a UserError naming it."""
        restore_models(path, state, self.models)
        parts = (("optimizers", self.optimizers), ("schedulers", {k: self.schedulers[k] for k in schedulers}))
        for kind, objects in parts:
            for name, obj in objects.items():
                try:
                    obj.load_state_dict(state[kind][name])
                except (ValueError, KeyError, RuntimeError) as e:
                    raise UserError(f"{path}: {kind.rstrip('s')} '{name}' does not match the config's: {e}") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.callbacks.load_state_dict(state["callbacks"])


def agent_state(agent) -> dict:
    """Everything a resume of ``agent`` needs: counters, parts, RNG streams, extra state and config, as plain
    tensors and values (``torch.load(weights_only=True)`` reads it)."""
    return {
        "format": FORMAT,
        "agent": type(agent).__name__,
        "epoch": agent.epoch,
        "batch_in_epoch": agent.batch_in_epoch,
        "samples_in_epoch": _samples_in_epoch(agent),
        "world_size": agent.world_size,
        "global_step": agent.global_step,
        "optimizer_steps": agent.optimizer_steps,
        "best": agent.monitor.best,
        "best_epoch": agent.monitor.best_epoch,
        "wall_seconds": agent.wall_seconds(),
        "schedule_total": agent.schedules.total,
        **Parts.of(agent).state_dict(),
        "rng": rng_state(),
        "extra": agent.extra_state(),
        "config": to_plain(agent.config),
        "versions": versions(),
    }


def _samples_in_epoch(agent) -> int:
    """How much of this epoch's global sample order has been trained on (for a mid-epoch resume)."""
    loader = getattr(agent.data_loader, "train_loader", None)
    if not agent.batch_in_epoch or loader is None or not isinstance(loader.sampler, ShardedSampler):
        return 0
    return loader.sampler.consumed(agent.batch_in_epoch - agent.batches_at_skip, loader.batch_size)


def save(agent, is_best: bool = False) -> None:
    """The agent's last.pth (and best.pth, epoch_N.pth when due), written by rank 0; every rank calls it."""
    # Under DDP each rank's RNG, gathered to rank 0, goes in too: a DDP resume is exact as well.
    rng_ranks = distributed.gather_to_main(rng_state()) if agent.world_size > 1 else None
    if not distributed.is_main():
        return
    with distributed.main_only():  # extra_state runs on rank 0 alone: no collective in it
        state = agent_state(agent)
    if rng_ranks:
        state["rng_ranks"] = rng_ranks
    try:
        write(state, agent.checkpoint_dir, is_best, agent.config.checkpoint_every)
    except TrainingStopped:
        agent.status = "checkpoint failed"
        raise


def remove_partial_saves(directory: Path) -> None:
    """Rank 0: temp files of saves that a kill cut short (call it holding the run's lock: no writer now)."""
    if not distributed.is_main():
        return
    for stale in directory.glob(".*.tmp"):
        stale.unlink()


def model_weights(state: dict, name: str, averaged: bool = False) -> dict | None:
    """Model ``name``'s weights in a checkpoint (``averaged``: its EMA where the run kept one); None when absent."""
    ema = state.get("callbacks", {}).get("ema", {})
    return ema[name]["module"] if averaged and name in ema else state["models"].get(name)


def is_own(path: Path | None, checkpoint_dir: Path) -> bool:
    """Whether ``path`` is one of the run's own checkpoints (in its ``checkpoint_dir``)."""
    return path is not None and path.parent.resolve() == checkpoint_dir.resolve()


def restore_models(path: Path, state: dict, models: dict[str, torch.nn.Module], averaged: bool = False) -> None:
    """Load each model's weights (``averaged``: its EMA where the run kept one); a mismatch is a UserError."""
    for name, model in models.items():
        weights = model_weights(state, name, averaged)
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


def write(state: dict, directory: Path, is_best: bool, every: int) -> None:
    """last.pth, and best.pth when ``is_best``, epoch_N.pth every ``every`` whole epochs (keep_checkpoints of them);
    a failed write (a full disk) stops training with the previous files intact."""
    last = directory / "last.pth"
    try:
        atomic_save(state, last)
        if is_best:
            copy_atomic(last, directory / "best.pth")
        if every and state["epoch"] % every == 0 and state["batch_in_epoch"] == 0:
            copy_atomic(last, directory / f"epoch_{state['epoch']:04d}.pth")
            prune_epochs(directory, state["config"]["keep_checkpoints"])
    except OSError as e:
        raise TrainingStopped(
            f"{directory}: could not save a checkpoint at epoch {state['epoch']} ({e.strerror or e}); the previous "
            "checkpoint files are intact. Free disk space, then run the same command to resume"
        ) from None


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
    """The checkpoint a training run continues from (``resume``: "auto", false or a path; the run's last command
    again with the same path goes on from its own last.pth), decided by rank 0."""

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
        if last.exists() and _started_from(checkpoint_dir.parent) == path.resolve():
            return last  # the command that started the run from ``path``, again: it goes on from its own progress
        if not path.is_file():
            raise UserError(f"config: key 'resume': checkpoint {path} not found")
        return path

    return _on_every_rank(choose, checkpoint_dir)


def earlier_config(run_dir: Path) -> dict:
    """The config the run's last command ran with (its config.json), {} when there is none."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _started_from(run_dir: Path) -> Path | None:
    """The checkpoint the run's last command named as ``resume``, if a path."""
    resume = earlier_config(run_dir).get("resume")
    return repo_path(resume).resolve() if isinstance(resume, str) and resume != "auto" else None


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
        if is_own(path, checkpoint_dir):
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
