"""BaseAgent: the one training loop every example shares, read top to bottom.

``__init__`` sets up the device, the run directory and the callbacks; a subclass builds its pieces with
``prepare_model``, ``make_optimizer``, ``make_scheduler`` and a data loader. ``run`` trains (``train``: epochs of
``train_one_epoch``, ``validate``, a checkpoint), resuming when a checkpoint is there, or tests, predicts, exports.

Override for what an agent computes: ``train_step`` (a GAN's two updates), ``make_metrics``/``eval_step`` (other
metrics), ``train_batches``/``validate`` (an RL agent's steps and evaluation), ``extra_state`` (more to save).
What cuts across the loop is a callback (utils/training/callbacks.py). A checkpoint holds ``checkpoint.Parts``;
utils/run/resume.py says what a resume does where the config changed. ``global_step`` counts batches,
``optimizer_steps`` optimizer updates (one per ``accumulate_grad_batches`` batches; per-step schedules follow it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from agents.common_keys import COMMON_KEYS
from utils.config import Key, build_torch_object, repo_path, to_plain
from utils.errors import RunInterrupted, TrainingStopped, UserError
from utils.run import checkpoint, summary
from utils.run.environment import write_environment
from utils.run.export import ExportInput, export_run, first_inputs
from utils.run.loggers import build_loggers
from utils.run.recorder import Recorder, check_run_dir
from utils.run.resume import load_weights, resume, start
from utils.training import distributed
from utils.training.accumulation import Accumulation
from utils.training.callbacks import Callbacks, build_callback
from utils.training.compile import compile_model, unwrap_compiled
from utils.training.data import batches_per_epoch, set_epoch, to_device
from utils.training.early_stopping import EarlyStopping
from utils.training.ema import EMACallback
from utils.training.metrics import Accuracy, LossSums, Mean, Metric, Monitor, all_finite
from utils.training.profiler import ProfileSteps
from utils.training.schedules import Schedules
from utils.training.seeding import derive_seed, seed_everything
from utils.training.signals import Signals


class BaseAgent:
    """The supervised loop: build, (resume,) train, validate, checkpoint, summarise."""

    length_key = "max_epoch"  # the config key that says how long to train (named when a run is done)

    config_schema: dict[str, Key] = COMMON_KEYS  # agents/common_keys.py; a subclass extends it

    def __init__(self, config) -> None:
        self.config = config
        self.device = distributed.setup(config.device)  # joins torchrun's process group; each process its GPU
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.run_dir = repo_path(config.experiments_dir) / config.exp_name
        self.checkpoint_dir = self.run_dir / "checkpoints"
        distributed.on_main(check_run_dir, self.run_dir)
        self.recorder = Recorder(self.run_dir, enabled=distributed.is_main(), name=config.exp_name)
        self.recorder.lock()
        checkpoint.remove_partial_saves(self.checkpoint_dir)
        seed_everything(config.seed, config.deterministic)
        self.threads_before = torch.get_num_threads()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.monitor = Monitor(config.monitor)  # "max valid/accuracy": picks best.pth

        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.optimizer_keys: dict[str, str] = {}  # optimizer name -> its config key
        self.schedules = Schedules(config)  # built when training starts: "total" needs the data's length
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        self.callbacks = self.build_callbacks()
        self.data_loader = None

        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # batches done in the current epoch (non-zero after a mid-epoch stop)
        self.resume_samples = 0  # samples of the epoch's order a mid-epoch checkpoint had consumed
        self.batches_at_skip = 0  # batch_in_epoch when this epoch's loader skipped them
        self.global_step = 0  # batches trained on (train_step calls)
        self.optimizer_steps = 0  # optimizer updates (fewer than global_step with accumulate_grad_batches)
        self.accumulation = Accumulation(config.get("accumulate_grad_batches", 1))
        self.last_metrics: dict[str, float] = {}
        self._train_loss: float | None = None  # this process's mean training loss over the epoch (metrics.csv)
        self.status = "started"
        self.progress_at_start: tuple[int, int] | None = None  # (epoch, global_step) when training began here
        self.stop_training = False  # an agent or a callback sets it to end training early (DQN solved, pruned)
        self.wall_before = 0.0  # training seconds of the runs this one resumed
        self._started = time.time()
        self.signals = Signals(self.recorder.warning, config.log_every, config.mode)  # Ctrl-C, SIGTERM

    def build_callbacks(self) -> Callbacks:
        """The callbacks the config turns on, in this order: EMA, early stopping, profiler, loggers, the user's."""
        c, callbacks = self.config, []
        if c.get("ema_decay") is not None:
            callbacks.append(EMACallback(c.ema_decay))
        if c.get("early_stop_patience"):
            patience, delta = c.early_stop_patience, c.get("early_stop_min_delta", 0.0)
            callbacks.append(EarlyStopping(patience, delta, self.monitor.mode, self.monitor.metric))
        if c.get("profile_steps"):
            callbacks.append(ProfileSteps(c.profile_steps))
        loggers = build_loggers(c.get("loggers", ["tensorboard"]), self.run_dir, c) if self.recorder.enabled else []
        self.recorder.loggers += loggers  # rank 0 logs
        callbacks += loggers
        callbacks += [build_callback(spec, f"callbacks[{i}]") for i, spec in enumerate(c.get("callbacks") or [])]
        return Callbacks(callbacks)

    # ----- building blocks for subclasses -----------------------------------------------------

    def prepare_model(self, model: nn.Module, name: str = "model", average: bool = True) -> nn.Module:
        """Move to the device (channels-last), wrap in DDP under torchrun, compile, register for checkpoints;
        with ema_decay, keep an average of its weights unless ``average`` is false (a GAN's discriminator)."""
        model = model.to(self.device)
        if self.config.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        ema = self.callbacks.find(EMACallback)
        if average and ema is not None:
            ema.track(name, model)
        model = distributed.wrap(model, self.device, self.config.get("sync_batchnorm", False))
        model = compile_model(model, self.config.get("compile", False), self.device)  # after DDP, as torch advises
        self.models[name] = model
        return model

    def make_optimizer(
        self, params: Iterable, name: str = "optimizer", key: str = "optimizer"
    ) -> torch.optim.Optimizer:
        """Build the optimizer named by config[key] (``{"type", "args"}`` from torch.optim)."""
        optimizer = build_torch_object("torch.optim", self.config[key], params, key)
        self.optimizers[name] = optimizer
        self.optimizer_keys[name] = key
        return optimizer

    def make_scheduler(self, optimizer: torch.optim.Optimizer, name: str = "scheduler", key: str = "scheduler") -> None:
        """Register the LR scheduler named by config[key] (none when null); built in ``self.schedules.built[name]``
        when training starts, when the run's length ("total") is known."""
        self.schedules.register(name, optimizer, key)

    unwrap = staticmethod(distributed.unwrap)  # the plain module inside torch.compile and DDP (evaluation, saving)

    def averaged(self) -> contextlib.AbstractContextManager:
        """Inside, the models kept with an EMA (ema_decay) hold their averaged weights (validation, samples)."""
        ema = self.callbacks.find(EMACallback)
        return ema.averaged(self) if ema is not None else contextlib.nullcontext()

    def to_device(self, batch: Any) -> Any:
        """Tensors (in lists, tuples, dicts) to the device, 4-D float ones channels-last with that key."""
        return to_device(batch, self.device, self.config.get("channels_last", False))

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the configured ``amp`` dtype (a no-op when amp is null)."""
        if self.config.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.config.amp])

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward ``loss`` into ``optimizer``'s parameters; on the last batch of an accumulation group,
        clip to grad_clip_norm and step (then the fp16 scaler, per-step schedules and on_optimizer_step follow)."""
        if self.accumulation.index == 0:  # also clears what other losses left (a GAN's G loss in D's gradients)
            optimizer.zero_grad(set_to_none=True)
        loss = self.accumulation.scale(loss, optimizer, type(self).__name__)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if not self.accumulation.last:
            return
        clip = self.config.grad_clip_norm
        if clip:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()  # once per optimizer step: a train_step may make 0 or several
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # after the step: the next group starts from nothing
        self.optimizer_steps += 1
        self.schedules.after_optimizer_step(optimizer)
        self.callbacks.call("on_optimizer_step", self, optimizer)

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
        if self.resume_samples:  # a mid-epoch resume: the rest of this epoch's order, whatever the layout now
            self.batch_in_epoch = loader.sampler.skip(self.resume_samples, loader.batch_size)
            self.resume_samples = 0
        self.batches_at_skip = self.batch_in_epoch
        total = len(loader)
        if self.config.max_train_batches:
            total = max(0, min(total, self.config.max_train_batches - self.batch_in_epoch))
        return islice(loader, total), total

    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch (sets the length of schedules whose args say "total")."""
        batches = batches_per_epoch(self.data_loader.train_loader)
        return min(batches, self.config.max_train_batches or batches)

    def schedule_length(self) -> int:
        """The run's length in scheduler steps: what an argument "total" of a scheduler stands for."""
        if not self.schedules.per_step:
            return self.max_epochs()
        return self.max_epochs() * -(-self.batches_per_epoch() // self.config.get("accumulate_grad_batches", 1))

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

    def class_names(self) -> list[str] | None:
        """The classes this run trained on (its class_names.json), else the data loader's; for predict, export."""
        return self.recorder.read_json("class_names.json").get("class_names") or getattr(
            self.data_loader, "class_names", None
        )

    def export_input(self) -> ExportInput:
        """mode=export: the network to export and a batch of its inputs (utils/run/export.py); here the model and
        the first validation inputs. An agent overrides it to export another network or to describe its inputs."""
        return ExportInput(self.unwrap(self.model), first_inputs(self.data_loader.valid_loader))

    # ----- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        """Train (resuming when a checkpoint is there) or, with mode=test/predict/export, evaluate, predict or
        export (the model of best.pth or ``resume`` to experiments/<exp>/export/, verified: utils/run/export.py)."""
        with self.signals.installed():  # training saves first; evaluation has nothing to save and stops at once
            self._run()

    def _run(self) -> None:
        try:
            if self.config.mode != "train":
                {"test": self.test, "predict": self.predict, "export": lambda: export_run(self)}[self.config.mode]()
                return
            self.monitor.check(self.metric_names(), type(self).__name__)
            if self.world_size > 1:
                self.seed_rank(step=0)
            self.schedules.build(self.schedule_length())
            start(self)  # resume, or init_weights; the class names checked
            self.recorder.write_config(to_plain(self.config))
            write_environment(self.recorder)  # env.json: versions, GPUs, pip freeze, git commit and diff
            self.progress_at_start = (self.epoch, self.global_step)
            self.train()
        except torch.OutOfMemoryError:
            self.status = "out of memory"
            raise TrainingStopped(
                f"out of {self.device.type.upper()} memory at epoch {self.epoch + 1}, step {self.global_step} with "
                f"batch_size {self.config.batch_size} per process: lower batch_size (or set amp=bf16); "
                "the last checkpoint is intact, run again to resume"
            ) from None

    def train(self) -> None:
        """Epochs until max_epochs: train, validate when due, step schedulers, checkpoint."""
        summary.log_start(self)
        self.in_training = True  # on_train_end is due (finalize calls it, also after a failure)
        self.callbacks.call("on_train_start", self)
        while self.epoch < self.max_epochs() and not self.stop_training:
            self.train_one_epoch()
            self.epoch += 1
            metrics = {}
            if self.should_validate():
                with self.averaged():
                    metrics = self.validate()
            if metrics:
                self.last_metrics = metrics
                self.recorder.epoch(self.epoch, self.global_step, metrics, self._train_loss)
            self.schedules.after_epoch(metrics, self.monitor.metric, optimizer_stepped=self.optimizer_steps > 0)
            if metrics:
                self.callbacks.call("on_validation_end", self, metrics)
            self.callbacks.call("on_epoch_end", self, metrics)
            # A stop a callback decided on one rank (a logger on rank 0) is every rank's: none waits at a collective.
            (self.stop_training,) = distributed.any_rank(self.stop_training)
            if not all_finite(self.unwrap(m) for m in self.models.values()):  # a last step's NaN is never saved
                self._diverged("the weights are not finite", epoch=self.epoch)
            self.save_checkpoint(self.monitor.update(metrics, self.epoch))  # with every callback's state
        if self.status == "started":
            self.status = "finished"

    def train_one_epoch(self) -> None:
        for model in self.models.values():
            model.train()
        batches, total = self.train_batches()
        in_epoch = self.batch_in_epoch + total  # batches this epoch ends with (the last group may be short)
        bar = tqdm(
            batches, total=total, desc=f"epoch {self.epoch + 1}", leave=False, disable=not distributed.is_main() or None
        )
        # Losses add up on the device; the host reads them every log_every steps only, so that a GPU is never
        # made to wait for the CPU's NaN and Ctrl-C checks at every step.
        losses = LossSums(self.device)
        ddp_models, due = [unwrap_compiled(m) for m in self.models.values()], False  # no_sync targets
        for batch in bar:
            self.accumulation.start(self.batch_in_epoch, self.batches_at_skip, in_epoch)
            with distributed.no_sync_unless(self.accumulation.last or self.world_size == 1, ddp_models):
                logs = self.train_step(batch)
            self.global_step += 1
            self.batch_in_epoch += 1
            self.callbacks.call("on_train_batch_end", self, logs)
            losses.add(logs.get("loss"))
            due = due or self.global_step % self.config.log_every == 0
            # Checked between accumulation groups only: a checkpoint never holds half-summed gradients.
            if due and self.accumulation.last:
                self._check_in(logs, losses, bar)
                due = False
        self.accumulation.end_epoch()
        self._check_in({}, losses, bar)  # before this epoch's checkpoint: a NaN is never saved
        self.batch_in_epoch = 0

    def validate(self, loader=None, split: str = "valid", limit: int | None | str = "config") -> dict[str, float]:
        """Evaluate ``limit`` batches of ``loader`` on all ranks (by default: the validation loader, and the debug
        key max_valid_batches; mode=test passes max_test_batches)."""
        loader = loader if loader is not None else self.data_loader.valid_loader
        for model in self.models.values():
            model.eval()
        metrics = self.make_metrics()
        limit = self.config.max_valid_batches if limit == "config" else limit
        with torch.no_grad(), self.autocast():
            for batch in islice(loader, limit):
                self.eval_step(batch, metrics)
        return {f"{split}/{name}": metric.result() for name, metric in metrics.items()}

    def test(self) -> None:
        """mode=test: load best.pth (or ``resume``) and evaluate the test split into summary.json."""
        path = self.load_test_checkpoint()
        loader = getattr(self.data_loader, "test_loader", None)
        if loader is None:
            raise UserError(f"config: key 'mode': {type(self.data_loader).__name__} has no test split")
        distributed.on_main(self.recorder.class_names, getattr(self.data_loader, "class_names", None), True)
        summary.record_test(self, self.validate(loader, split="test", limit=self.config.get("max_test_batches")), path)

    def predict(self) -> None:
        """mode=predict: outputs from inputs (segmentation masks, generated samples) under out/predict/."""
        raise UserError(f"config: key 'mode': {type(self).__name__} has no predict mode; use train or test")

    def save_checkpoint(self, is_best: bool = False) -> None:
        """last.pth (and best.pth, epoch_N.pth when due), written atomically by rank 0; call it on every rank."""
        checkpoint.save(self, is_best)

    def read_checkpoint(self, path: Path) -> dict:
        """``path``'s checkpoint, rank 0's copy on every rank (an agent may look at it before it is restored)."""
        return checkpoint.load_on_every_rank(path, self.recorder.info)

    def load_checkpoint(self, path: str | Path, weights_only: bool = False) -> None:
        """Restore the whole training state from ``path`` (utils/run/resume.py), or with ``weights_only``
        (mode=test/predict/export) the models, with their averaged weights where the run kept an EMA."""
        (load_weights if weights_only else resume)(self, Path(path))

    def load_test_checkpoint(self) -> Path:
        """Load the models of ``resume`` (a path), else best.pth, else last.pth; returns which."""
        path = checkpoint.test_path(self.checkpoint_dir, self.config.resume)
        self.load_checkpoint(path, weights_only=True)
        return path

    def finalize(self) -> None:
        """Write summary.json, end the callbacks, close writers, leave the process group (also after a failed
        __init__)."""
        training = hasattr(self, "signals") and self.config.mode == "train"
        with self.signals.installed() if training else contextlib.nullcontext():  # a signal now: noted, not fatal
            summary.end(self)

    # ----- helpers ------------------------------------------------------------------------------

    def num_params(self) -> int:
        return sum(p.numel() for m in self.models.values() for p in self.unwrap(m).parameters())

    def wall_seconds(self) -> float:
        return self.wall_before + time.time() - self._started

    def seed_rank(self, step: int) -> None:
        """Seed this rank apart from the others (initial weights agree, dropout and augmentation must not)."""
        seed_everything(derive_seed(self.config.seed, "rank", self.rank, step), self.config.deterministic)

    def where(self) -> str:
        """Where training stands, numbered as the progress bar numbers epochs: 'in epoch 2 after batch 6'."""
        within = f"in epoch {self.epoch + 1} after batch {self.batch_in_epoch}"
        return within if self.batch_in_epoch else f"after epoch {self.epoch}"

    def _check_in(self, logs: dict, losses: LossSums, bar: tqdm) -> None:
        """The host's look at training (every log_every steps): NaN, Ctrl-C on any rank, scalars, progress bar."""
        window, epoch_mean = losses.read()
        bad, interrupted = distributed.any_rank(not math.isfinite(window), self.signals.received is not None)
        if bad:
            self._diverged(f"loss is {window} (checked every log_every steps)")
        if logs:
            scalars = {f"train/{k}": float(v) for k, v in logs.items() if v is not None}
            self.recorder.scalars(scalars, self.global_step)
        self._train_loss = epoch_mean
        if epoch_mean is not None:
            bar.set_postfix(loss=f"{epoch_mean:.4f}", refresh=False)
        if interrupted:
            self._interrupted()

    def _interrupted(self) -> None:
        self.save_checkpoint()
        self.status = "interrupted"
        raise RunInterrupted(
            f"stopped by {self.signals.name()} {self.where()}, step {self.global_step}; checkpoint saved to "
            f"{self.checkpoint_dir / 'last.pth'}: run the same command to resume"
        )

    def _diverged(self, what: str, epoch: int | None = None) -> None:
        self.status = "diverged"
        last = self.checkpoint_dir / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"{what} at epoch {epoch or self.epoch + 1}, step {self.global_step}: training stopped; {kept}. "
            "Try a lower optimizer.args.lr or set grad_clip_norm"
        )
