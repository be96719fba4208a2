"""What a run tells about itself: its opening lines in the log, summary.json, mode=test's results; and its end
(``end``: summary.json, the callbacks' on_train_end, the writers closed, the process group left)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from utils.errors import RunInterrupted
from utils.run import checkpoint
from utils.training import distributed


def log_start(agent) -> None:
    """The run log's first lines: the agent, its processes and batch, its parameters, its data."""
    cfg, recorder = agent.config, agent.recorder
    recorder.info(
        f"{type(agent).__name__} '{cfg.exp_name}' on {agent.device} x {agent.world_size} process(es): "
        f"batch_size {cfg.batch_size} per process, global batch {cfg.batch_size * agent.world_size}; "
        f"{agent.num_params():,} parameters; run directory {agent.run_dir}"
    )
    limits = [f"{k}={cfg[k]}" for k in ("max_train_batches", "max_valid_batches") if cfg.get(k)]
    if limits:  # kept in the run's config.json: a later run of its folder has them too
        recorder.warning(f"debug limits on: {', '.join(limits)} (set them to null for whole epochs)")
    if agent.data_loader is None:
        return
    loaders = {split: getattr(agent.data_loader, f"{split}_loader", None) for split in ("train", "valid", "test")}
    sizes = ", ".join(f"{split} {len(loader.dataset):,} samples" for split, loader in loaders.items() if loader)
    workers = getattr(loaders["train"], "num_workers", None)
    chosen = f"; num_workers auto: {workers}" if cfg.get("num_workers") == "auto" and workers is not None else ""
    recorder.info(f"data: data_mode={cfg.data_mode} from {type(agent.data_loader).__name__}: {sizes}{chosen}")


def summary(agent) -> dict:
    """summary.json of a training run."""
    stopped = agent.status == "early stopped"
    return {
        "status": agent.status,
        "agent": type(agent).__name__,
        "exp_name": agent.config.exp_name,
        "epochs": agent.epoch,
        "steps": agent.global_step,
        "optimizer_steps": agent.optimizer_steps,
        "wall_seconds": round(agent.wall_seconds(), 3),
        "num_params": agent.num_params(),
        "world_size": agent.world_size,
        "final": agent.last_metrics,
        "best": {"metric": agent.monitor.metric, "value": agent.monitor.best, "epoch": agent.monitor.best_epoch},
        **({"early_stopped_epoch": agent.epoch} if stopped else {}),
        **agent.summary_extra(),
    }


def has_news(agent) -> bool:
    """Whether summary.json needs writing: not when a finished run was merely run again."""
    if getattr(agent, "status", "started") == "started":
        return False
    ended = agent.status in ("finished", "early stopped")
    rerun = ended and (agent.epoch, agent.global_step) == agent.progress_at_start
    return not (rerun and (agent.run_dir / "summary.json").exists())


def record_test(agent, metrics: dict[str, float], path: Path) -> None:
    """mode=test's metrics to the log and summary.json (the latest at the top, each checkpoint's under "tests"), and
    to the callbacks' ``on_test_end`` (a tracker sends them to the tested checkpoint's run)."""
    agent.recorder.info("test: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    agent.last_metrics, agent.status = metrics, "tested"
    old = agent.recorder.read_json("summary.json")
    where, run = Path(path).resolve(), agent.run_dir.resolve()
    name = str(where.relative_to(run)) if where.is_relative_to(run) else str(where)
    tests = {**old.get("tests", {}), name: metrics}
    tested = {"tested_checkpoint": str(path), "tested_after_epoch": old.get("epochs"), "tests": tests}
    agent.recorder.write_json("summary.json", {**old, **metrics, **tested})
    agent.callbacks.call("on_test_end", agent, metrics)


def end(agent) -> None:
    """The end of a run (also of a failed one, or of a failed ``__init__``): summary.json and the curves, the
    callbacks' ``on_train_end``, the writers closed, torch's thread count as found, the process group left."""
    recorder, training = getattr(agent, "recorder", None), getattr(agent, "in_training", False)
    error = sys.exc_info()[1]  # run in main's finally: what ends the run, if anything
    try:
        if training and agent.status == "started" and error is not None:
            agent.status = "aborted" if isinstance(error, KeyboardInterrupt) else "failed"  # in summary.json
        if recorder is not None and error is not None and not isinstance(error, RunInterrupted):
            recorder.failed(error)  # run.log says why, as the terminal does (an interrupt: it said so already)
        if recorder is not None and agent.config.mode == "train" and has_news(agent):
            # mode=test's results stay, with the epoch they were of, when the run went on from its own checkpoint
            own = checkpoint.is_own(getattr(agent, "resumed_from", None), agent.checkpoint_dir)
            old = recorder.read_json("summary.json") if own else {}
            tested = {k: v for k, v in old.items() if k.startswith(("test/", "tested_", "tests"))}
            recorder.write_json("summary.json", {**summary(agent), **tested})
            recorder.curves()
        if training:
            agent.in_training = False
            agent.callbacks.call("on_train_end", agent)
    finally:
        if recorder is not None:
            recorder.close()
        if hasattr(agent, "threads_before"):
            torch.set_num_threads(agent.threads_before)  # a process-wide setting: leave it as found
        distributed.teardown()
