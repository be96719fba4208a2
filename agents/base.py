"""BaseAgent: the one training loop every example shares.

An agent subclass builds its pieces in ``__init__`` (models through ``prepare_model``,
optimizers through ``make_optimizer``, a data loader) and overrides only what differs:
``train_step`` for a GAN's two updates, ``train_batches``/``validate`` for an RL agent. Device,
seeding, AMP, gradient clipping, DDP, checkpoints, resume, logging and Ctrl-C live here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from utils import checkpoint, distributed
from utils.config import (
    REQUIRED,
    Key,
    build_torch_object,
    did_you_mean,
    plain_name,
    relative_path,
    repo_path,
    to_plain,
    torch_object_key,
)
from utils.data import set_epoch
from utils.errors import RunInterrupted, TrainingStopped, UserError
from utils.metrics import Accuracy, Mean, Metric
from utils.recorder import Recorder
from utils.seeding import derive_seed, seed_everything


def _device_check(value: str, where: str, source: str) -> None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return
    raise UserError(f"{source}: key '{where}': expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")


def _monitor_check(value: str, where: str, source: str) -> None:
    parts = value.split()
    if len(parts) != 2 or parts[0] not in ("min", "max"):
        raise UserError(f"{source}: key '{where}': expected 'max <metric>' or 'min <metric>', got {value!r}")


def _resume_check(value: Any, where: str, source: str) -> None:
    if value is True or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{source}: key '{where}': expected \"auto\", false or a checkpoint path, got {value!r}")


class BaseAgent:
    """The supervised loop: build, (resume,) train, validate, checkpoint, summarise."""

    length_key = "max_epoch"  # the config key that says how long to train (named when a run is done)

    # The config keys every agent understands, with defaults; a subclass extends this dict.
    config_schema: dict[str, Key] = {
        "exp_name": Key(REQUIRED, str, "run directory name under experiments/", check=plain_name),
        "agent": Key(REQUIRED, str, "agent class name, looked up in agents/__init__.py"),
        "description": Key("", str, "free text, kept with the run"),
        "mode": Key(
            "train",
            str,
            "train; test: evaluate best.pth (or resume) on the test split; predict: outputs from inputs "
            "(agents that make them)",
            choices=("train", "test", "predict"),
        ),
        "seed": Key(1, int, "seeds python, numpy, torch and loader workers", min=0, max=2**31 - 1),
        "deterministic": Key(False, bool, "deterministic kernels (slower on GPU)"),
        "torch_threads": Key(
            None, int, "CPU threads for torch ops (null: torch's default)", min=1, max=1024, nullable=True
        ),
        "device": Key("auto", str, "auto (CUDA when present), cpu, cuda, cuda:N", check=_device_check),
        "max_epoch": Key(10, int, "train until this many epochs are done", min=1, max=10**6),
        "validate_every": Key(1, int, "validate every N epochs (and after the last)", min=1),
        "resume": Key(
            "auto",
            (str, bool),
            "auto: continue from checkpoints/last.pth when present; "
            "a path: resume from that file; false: never (an error if checkpoints exist)",
            check=_resume_check,
        ),
        "data_mode": Key("random", str, "download, folder or random", choices=("download", "folder", "random")),
        "data_root": Key(
            "data", str, "dataset directory; relative paths are under the repository", check=relative_path
        ),
        "experiments_dir": Key(
            "experiments", str, "where run directories go; relative to the repository", check=relative_path
        ),
        "batch_size": Key(64, int, "per process: the global batch is batch_size x processes", min=1, max=2**20),
        "num_workers": Key(0, int, "data-loader worker processes", min=0, max=128),
        "amp": Key(
            None,
            str,
            "mixed precision: null, bf16 or fp16 (fp16 uses a grad scaler)",
            choices=("bf16", "fp16"),
            nullable=True,
        ),
        "grad_clip_norm": Key(None, float, "clip the gradient norm to this value", min=1e-12, nullable=True),
        "sync_batchnorm": Key(False, bool, "convert BatchNorm to SyncBatchNorm under DDP"),
        "log_every": Key(50, int, "log the training loss every N steps", min=1),
        "monitor": Key(
            "max valid/accuracy", str, "'max <metric>' or 'min <metric>' choosing best.pth", check=_monitor_check
        ),
        "checkpoint_every": Key(0, int, "also keep checkpoints/epoch_N.pth every N epochs (0: off)", min=0),
        "keep_checkpoints": Key(0, int, "how many epoch_N.pth to keep (0: all)", min=0),
        "max_train_batches": Key(None, int, "debug: stop each epoch after N batches", min=1, nullable=True),
        "max_valid_batches": Key(None, int, "debug: validate on N batches", min=1, nullable=True),
        "optimizer": torch_object_key(
            "torch.optim", "optimizer", {"type": "SGD", "args": {"lr": 0.01}}, "a torch.optim class and its arguments"
        ),
        "scheduler": torch_object_key(
            "torch.optim.lr_scheduler",
            "lr scheduler",
            None,
            "stepped once per epoch; ReduceLROnPlateau gets the monitored metric",
        ),
    }

    def __init__(self, config) -> None:
        self.config = config
        self.device = self._pick_device(config.device)
        distributed.init(self.device.type)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank())
        if self.device.type == "cuda":  # stray .cuda() calls and pinned memory go to this GPU, not GPU 0
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.run_dir = repo_path(config.experiments_dir) / config.exp_name
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.recorder = Recorder(self.run_dir, enabled=distributed.is_main(), name=config.exp_name)
        self.recorder.lock()
        if distributed.is_main():  # temp files of a save that a kill cut short (we hold the lock: no writer now)
            for stale in self.checkpoint_dir.glob(".*.tmp"):
                stale.unlink()
        seed_everything(config.seed, config.deterministic)
        self._threads_before = torch.get_num_threads()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)

        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._optimizer_keys: dict[str, str] = {}  # optimizer name -> its config key
        self.schedulers: dict[str, Any] = {}
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        self.data_loader = None

        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # batches done in the current epoch (non-zero after a mid-epoch stop)
        self.global_step = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.monitor_mode, self.monitor_metric = config.monitor.split()  # "max valid/accuracy"
        self.status = "started"
        self._step_at_start: int | None = None  # global_step when training began in this process
        self.stop_training = False  # an agent sets it to end training early (e.g. DQN solved)
        # Called with (epoch, metrics) after each validation's checkpoint; True stops training (a sweep's pruner).
        self.after_validation: Callable[[int, dict[str, float]], bool] | None = None
        self._wall_before = 0.0
        self._started = time.time()
        self._stop_signal: int | None = None

    # ----- building blocks for subclasses -----------------------------------------------------

    def prepare_model(self, model: nn.Module, name: str = "model") -> nn.Module:
        """Move to the device, wrap in DDP under torchrun, and register for checkpoints."""
        model = model.to(self.device)
        if self.world_size > 1:
            if self.config.sync_batchnorm:
                if self.device.type != "cuda":
                    raise UserError(
                        "config: key 'sync_batchnorm': PyTorch's SyncBatchNorm runs on CUDA devices only; "
                        "set sync_batchnorm=false to train on the CPU"
                    )
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.models[name] = model
        return model

    def make_optimizer(
        self, params: Iterable, name: str = "optimizer", key: str = "optimizer"
    ) -> torch.optim.Optimizer:
        """Build the optimizer named by config[key] (``{"type", "args"}`` from torch.optim)."""
        optimizer = build_torch_object("torch.optim", self.config[key], params, key)
        self.optimizers[name] = optimizer
        self._optimizer_keys[name] = key
        return optimizer

    def make_scheduler(self, optimizer: torch.optim.Optimizer, name: str = "scheduler", key: str = "scheduler") -> Any:
        """Build the LR scheduler named by config[key], or None when that key is null."""
        if not self.config[key]:
            return None
        scheduler = build_torch_object("torch.optim.lr_scheduler", self.config[key], optimizer, key)
        self.schedulers[name] = scheduler
        return scheduler

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The plain module inside a DDP wrapper (use it for evaluation and saving)."""
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the configured ``amp`` dtype (a no-op when amp is null)."""
        if self.config.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """zero_grad, backward (scaled under fp16), clip to grad_clip_norm, step."""
        optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip_norm
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    # ----- the supervised case: override these for other kinds of training -----------------

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimisation step on one batch; returns values to log ('loss' is checked for NaN)."""
        x, y = self.to_device(batch)
        with self.autocast():
            loss = self.loss(self.model(x), y)
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}

    def make_metrics(self) -> dict[str, Metric]:
        """Fresh metrics for one validation pass; their names appear as valid/<name>."""
        return {"loss": Mean(), "accuracy": Accuracy()}

    def metric_names(self) -> list[str]:
        """The names ``validate`` reports (``monitor`` must pick one of them)."""
        return [f"valid/{name}" for name in self.make_metrics()]

    def eval_step(self, batch: Any, metrics: dict[str, Metric]) -> None:
        """Update ``metrics`` with one batch (the model is unwrapped: no DDP collectives here)."""
        x, y = self.to_device(batch)
        output = self.unwrap(self.model)(x)
        metrics["loss"].update(self.loss(output, y), len(y))
        metrics["accuracy"].update(output, y)

    def train_batches(self) -> tuple[Iterable, int]:
        """This epoch's batches (the rest of them after a mid-epoch resume) and how many."""
        loader = self.data_loader.train_loader
        set_epoch(loader, self.epoch, self.config.seed)
        if self.batch_in_epoch:
            loader.sampler.skip(self.batch_in_epoch * loader.batch_size)
        total = len(loader)
        if self.config.max_train_batches:
            total = max(0, min(total, self.config.max_train_batches - self.batch_in_epoch))
        return islice(loader, total), total

    def max_epochs(self) -> int:
        return self.config.max_epoch

    def should_validate(self) -> bool:
        return self.epoch % self.config.validate_every == 0 or self.epoch >= self.max_epochs()

    def extra_state(self) -> dict:
        """Agent-specific checkpoint entries (tensors and plain values only)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what ``extra_state`` returned."""

    def summary_extra(self) -> dict:
        """Agent-specific entries for summary.json."""
        return {}

    # ----- the seed's method names ----------------------------------------------------------

    def run(self) -> None:
        """Train (resuming when a checkpoint is there) or, with mode=test, evaluate."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.config.mode in ("test", "predict"):
                self.test() if self.config.mode == "test" else self.predict()
                return
            self._check_monitor()
            if self.world_size > 1:
                self._seed_rank(step=0)
            path = self._resume_path()
            if path is not None:
                self.load_checkpoint(path)
                if path.resolve().parent != self.checkpoint_dir.resolve():
                    self.best = self.best_epoch = None  # another run's best: this run picks its own best.pth
            self._write_config()
            self._step_at_start = self.global_step
            self.train()
        except torch.OutOfMemoryError:
            self.status = "out of memory"
            raise TrainingStopped(
                f"out of {self.device.type.upper()} memory at epoch {self.epoch + 1}, step {self.global_step} with "
                f"batch_size {self.config.batch_size} per process: lower batch_size (or set amp=bf16); "
                "the last checkpoint is intact, run again to resume"
            ) from None
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def train(self) -> None:
        """Epochs until max_epochs: train, validate when due, step schedulers, checkpoint."""
        self._log_start()
        while self.epoch < self.max_epochs() and not self.stop_training:
            self.train_one_epoch()
            self.epoch += 1
            metrics = self.validate() if self.should_validate() else {}
            if metrics:
                self.last_metrics = metrics
                self.recorder.scalars(metrics, self.global_step, flush=True)
                self.recorder.metrics_row({"epoch": self.epoch, "step": self.global_step, **metrics})
                self.recorder.info(f"epoch {self.epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            self._step_schedulers(metrics)
            self.save_checkpoint(self._update_best(metrics))
            if metrics and self.after_validation is not None and self.after_validation(self.epoch, metrics):
                self.stop_training = True
        self.status = "finished"

    def train_one_epoch(self) -> None:
        for model in self.models.values():
            model.train()
        batches, total = self.train_batches()
        bar = tqdm(
            batches,
            total=total,
            desc=f"epoch {self.epoch + 1}",
            leave=False,
            disable=None if distributed.is_main() else True,
        )
        loss_sum, loss_count = 0.0, 0  # the bar shows the epoch's running mean loss
        for batch in bar:
            logs = self.train_step(batch)
            if self.scaler is not None:
                self.scaler.update()
            self.global_step += 1
            self.batch_in_epoch += 1
            loss = logs.get("loss")
            value = float(loss) if loss is not None else 0.0
            bad, interrupted = distributed.any_rank(not math.isfinite(value), self._stop_signal is not None)
            if bad:
                self._diverged(value)
            if loss is not None:
                loss_sum, loss_count = loss_sum + value, loss_count + 1
            if self.global_step % self.config.log_every == 0:
                self.recorder.scalars(
                    {f"train/{k}": float(v) for k, v in logs.items() if v is not None}, self.global_step
                )
                if loss_count:
                    bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", refresh=False)
            if interrupted:
                self._interrupted()
        self.batch_in_epoch = 0

    def validate(self, loader=None, split: str = "valid") -> dict[str, float]:
        """Evaluate every batch of ``loader`` (the validation loader by default) on all ranks."""
        loader = loader if loader is not None else self.data_loader.valid_loader
        for model in self.models.values():
            model.eval()
        metrics = self.make_metrics()
        limit = self.config.max_valid_batches
        with torch.no_grad(), self.autocast():
            for batch in islice(loader, limit):
                self.eval_step(batch, metrics)
        results = {}
        for name, metric in metrics.items():
            metric.reduce()
            results[f"{split}/{name}"] = metric.compute()
        return results

    def test(self) -> None:
        """mode=test: load best.pth (or ``resume``) and evaluate the test split into summary.json."""
        path = self._load_test_checkpoint()
        loader = getattr(self.data_loader, "test_loader", None)
        if loader is None:
            raise UserError(f"config: key 'mode': {type(self.data_loader).__name__} has no test split")
        self._record_test(self.validate(loader, split="test"), path)

    def predict(self) -> None:
        """mode=predict: outputs from inputs (segmentation masks, generated samples) under out/predict/."""
        raise UserError(f"config: key 'mode': {type(self).__name__} has no predict mode; use train or test")

    def _load_test_checkpoint(self) -> Path:
        """Load the models of ``resume`` (a path), else best.pth, else last.pth; returns which."""
        resume = self.config.resume
        if isinstance(resume, str) and resume != "auto":
            path = Path(resume)
        else:
            best, last = self.checkpoint_dir / "best.pth", self.checkpoint_dir / "last.pth"
            path = best if best.exists() or not last.exists() else last
        if not path.exists():
            raise UserError(f"{path}: no checkpoint to test; train first (mode=train) or set resume to a checkpoint")
        self.load_checkpoint(path, weights_only=True)
        return path

    def _record_test(self, metrics: dict[str, float], path: Path) -> None:
        self.recorder.info("test: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.last_metrics, self.status = metrics, "tested"
        summary = self.recorder.read_json("summary.json")
        self.recorder.write_json("summary.json", {**summary, **metrics, "tested_checkpoint": str(path)})

    def save_checkpoint(self, is_best: bool = False) -> None:
        """last.pth (and best.pth, epoch_N.pth when due), written atomically by rank 0; call it on every rank."""
        # Under DDP each rank's RNG, gathered to rank 0, goes in too: a DDP resume is exact as well.
        rng_ranks = distributed.gather_to_main(checkpoint.rng_state()) if self.world_size > 1 else None
        if not distributed.is_main():
            return
        state = self.checkpoint_state()
        if rng_ranks:
            state["rng_ranks"] = rng_ranks
        last = self.checkpoint_dir / "last.pth"
        try:
            checkpoint.atomic_save(state, last)
            if is_best:
                self._copy_atomic(last, self.checkpoint_dir / "best.pth")
            every = self.config.checkpoint_every
            if every and self.epoch % every == 0 and self.batch_in_epoch == 0:
                self._copy_atomic(last, self.checkpoint_dir / f"epoch_{self.epoch:04d}.pth")
                keep = self.config.keep_checkpoints
                if keep:
                    for old in sorted(self.checkpoint_dir.glob("epoch_*.pth"))[:-keep]:
                        old.unlink()
        except OSError as e:
            self.status = "checkpoint failed"
            raise TrainingStopped(
                f"{self.checkpoint_dir}: could not save a checkpoint at epoch {self.epoch} ({e.strerror or e}); "
                "the previous checkpoint files are intact. Free disk space, then run the same command to resume"
            ) from None

    def checkpoint_state(self) -> dict:
        return {
            "format": 1,
            "agent": type(self).__name__,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wall_seconds": self.wall_seconds(),
            "models": {k: self.unwrap(m).state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": checkpoint.rng_state(),
            "extra": self.extra_state(),
            "config": to_plain(self.config),
            "versions": checkpoint.versions(),
        }

    def load_checkpoint(self, path: str | Path, weights_only: bool = False) -> None:
        """Restore models (and, unless ``weights_only``, the whole training state) from ``path``."""
        state = checkpoint.load(path)
        agent = type(self).__name__
        if state.get("agent") != agent:
            raise UserError(f"{path}: checkpoint of {state.get('agent')}, but the config's agent is {agent}")
        self._check_matches(path, state)
        for name, model in self.models.items():
            try:
                self.unwrap(model).load_state_dict(state["models"][name])
            except (RuntimeError, KeyError) as e:
                first = str(e).strip().splitlines()[0]
                raise UserError(f"{path}: model '{name}' does not match the config's model: {first}") from None
        if weights_only:
            return
        for kind, objects in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            for name, obj in objects.items():
                try:
                    obj.load_state_dict(state[kind][name])
                except (ValueError, KeyError, RuntimeError) as e:
                    raise UserError(f"{path}: {kind[:-1]} '{name}' does not match the config's: {e}") from None
        self._apply_changed_optimizer_args(state.get("config", {}))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step = state["global_step"]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self._wall_before = state["wall_seconds"]
        self.load_extra_state(state.get("extra", {}))
        rng_ranks = state.get("rng_ranks", [state["rng"]])
        if len(rng_ranks) == self.world_size:
            checkpoint.set_rng_state(rng_ranks[self.rank])
        else:  # saved by another number of processes: fresh streams per rank, still reproducible
            self._seed_rank(step=self.global_step)
        self.recorder.truncate_metrics(after_epoch=self.epoch)
        where = f"epoch {self.epoch}" + (f", batch {self.batch_in_epoch}" if self.batch_in_epoch else "")
        self.recorder.info(f"resumed from {path} at {where} (step {self.global_step})")
        if self.epoch >= self.max_epochs() and not self.batch_in_epoch:
            self.recorder.info(
                f"already trained ({self.epoch} epochs, step {self.global_step}): raise {self.length_key} to continue"
            )

    def finalize(self) -> None:
        """Write summary.json, close writers, leave the process group (also after a failed __init__)."""
        recorder = getattr(self, "recorder", None)
        try:
            if recorder is not None and self.config.mode == "train" and self._has_news():
                recorder.write_json("summary.json", self.summary())
                recorder.curves()
        finally:
            if recorder is not None:
                recorder.close()
            if hasattr(self, "_threads_before"):
                torch.set_num_threads(self._threads_before)  # a process-wide setting: leave it as found
            distributed.teardown()

    def _has_news(self) -> bool:
        """Whether summary.json needs writing: not when a finished run was merely run again."""
        if getattr(self, "status", "started") == "started":
            return False
        rerun = self.status == "finished" and self.global_step == self._step_at_start
        return not (rerun and (self.run_dir / "summary.json").exists())

    def summary(self) -> dict:
        metric = self.monitor_metric
        return {
            "status": self.status,
            "agent": type(self).__name__,
            "exp_name": self.config.exp_name,
            "epochs": self.epoch,
            "steps": self.global_step,
            "wall_seconds": round(self.wall_seconds(), 3),
            "num_params": self.num_params(),
            "world_size": self.world_size,
            "final": self.last_metrics,
            "best": {"metric": metric, "value": self.best, "epoch": self.best_epoch},
            **self.summary_extra(),
        }

    # ----- helpers ------------------------------------------------------------------------------

    def num_params(self) -> int:
        return sum(p.numel() for m in self.models.values() for p in self.unwrap(m).parameters())

    def wall_seconds(self) -> float:
        return self._wall_before + time.time() - self._started

    def _seed_rank(self, step: int) -> None:
        """Seed this rank apart from the others (initial weights agree, dropout and augmentation must not)."""
        seed_everything(derive_seed(self.config.seed, "rank", self.rank, step), self.config.deterministic)

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(
                f"config: key 'device': {name!r} asked for, but this machine has no CUDA device; "
                "use device=auto or device=cpu"
            )
        return torch.device(name)

    def _check_monitor(self) -> None:
        metric = self.monitor_metric
        names = self.metric_names()
        if metric not in names:
            raise UserError(
                f"config: key 'monitor': {type(self).__name__} reports no metric '{metric}' "
                f"(it reports {', '.join(names)}){did_you_mean(metric, names)}"
            )

    def _update_best(self, metrics: dict[str, float]) -> bool:
        mode, metric = self.monitor_mode, self.monitor_metric
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        better = self.best is None or (value > self.best if mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch = value, self.epoch
        return better

    def _step_schedulers(self, metrics: dict[str, float]) -> None:
        metric = self.monitor_metric
        for scheduler in self.schedulers.values():
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if metric in metrics:
                    scheduler.step(metrics[metric])
            else:
                scheduler.step()

    def _resume_path(self) -> Path | None:
        resume, last = self.config.resume, self.checkpoint_dir / "last.pth"
        if resume == "auto":
            return last if last.exists() else None
        if resume is False:
            existing = sorted(self.checkpoint_dir.glob("*.pth"))
            if existing:
                raise UserError(
                    f"{existing[0]}: this experiment already has checkpoints and resume is false; "
                    "use resume=auto to continue it, or another exp_name for a fresh run"
                )
            return None
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"config: key 'resume': checkpoint {path} not found")
        return path

    def _write_config(self) -> None:
        """config.json of this run; an earlier, different one is kept as config.N.json."""
        if not distributed.is_main():
            return
        path = self.run_dir / "config.json"
        text = json.dumps(to_plain(self.config), indent=2) + "\n"
        if path.exists() and path.read_text() != text:
            n = 1
            while (self.run_dir / f"config.{n}.json").exists():
                n += 1
            os.replace(path, self.run_dir / f"config.{n}.json")
            self.recorder.info(f"config changed since the last run; the old one is config.{n}.json")
        path.write_text(text)

    def _apply_changed_optimizer_args(self, old_config: dict) -> None:
        """Optimizer args changed since the checkpoint (say, a lower lr to fine-tune) win over its state."""
        for name, key in self._optimizer_keys.items():
            old_args = (old_config.get(key) or {}).get("args", {})
            for arg, value in self.config[key].args.items():
                groups = self.optimizers[name].param_groups
                if old_args.get(arg) != value and arg in groups[0]:
                    for group in groups:
                        group[arg] = value
                    self.recorder.info(f"{key}.args.{arg} changed since the checkpoint: now {value}")

    def _check_matches(self, path: str | Path, state: dict) -> None:
        old = state.get("config", {})
        for key in self._optimizer_keys.values():
            if old.get(key) and old[key]["type"] != self.config[key]["type"]:
                raise UserError(
                    f"{path}: checkpoint optimizer '{key}' is {old[key]['type']}, "
                    f"the config's is {self.config[key]['type']}"
                )

    def _log_start(self) -> None:
        cfg = self.config
        self.recorder.info(
            f"{type(self).__name__} '{cfg.exp_name}' on {self.device} x {self.world_size} process(es): "
            f"batch_size {cfg.batch_size} per process, global batch {cfg.batch_size * self.world_size}; "
            f"{self.num_params():,} parameters; run directory {self.run_dir}"
        )

    def _on_signal(self, signum: int, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        self.recorder.warning(f"{signal.Signals(signum).name}: saving a checkpoint after this step (again to abort)")

    def _interrupted(self) -> None:
        self.save_checkpoint()
        self.status = "interrupted"
        raise RunInterrupted(
            f"stopped by {signal.Signals(self._stop_signal or signal.SIGINT).name} at epoch {self.epoch + 1}, "
            f"step {self.global_step}; checkpoint saved to {self.checkpoint_dir / 'last.pth'}: "
            "run the same command to resume"
        )

    def _diverged(self, value: float) -> None:
        self.status = "diverged"
        last = self.checkpoint_dir / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"loss is {value} at epoch {self.epoch + 1}, step {self.global_step}: training stopped; {kept}. "
            "Try a lower optimizer.args.lr or set grad_clip_norm"
        )

    @staticmethod
    def _copy_atomic(src: Path, dst: Path) -> None:
        tmp = dst.with_name(f".{dst.name}.tmp")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
