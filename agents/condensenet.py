"""CondenseNet on CIFAR-10: learned group convolutions condensed as training progresses, then converted.

What differs from BaseAgent's supervised loop: before each step the network is told how far
training has come (progress = (epoch + batch / batches per epoch) / max_epoch, the authors'
formula), and prunes at its stage boundaries; top-5 accuracy is reported too; at the end of
training the condensed test-time network is written to checkpoints/condensed.pth, which
``mode=test resume=.../condensed.pth`` evaluates. Progress is a function of the epoch and batch
counters BaseAgent restores, and the masks and stages are buffers in the model's state, so a
resume (mid-epoch too) condenses at the same steps as a straight run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from agents.base import BaseAgent
from datasets.cifar10 import MEAN, STD, Cifar10DataLoader
from graphs.models.condensenet import CondensedBlock, CondenseNet, condense, condensed_skeleton
from utils.config import Key, torch_object_key
from utils.errors import UserError
from utils.examples.flops import count_flops
from utils.run import checkpoint
from utils.run.export import ExportInput, first_inputs
from utils.training import distributed
from utils.training.ema import EMACallback
from utils.training.metrics import Accuracy, Mean, Metric


def _positive_ints(value: list, where: str, source: str) -> None:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise UserError(f"{source}: key '{where}': expected a list of positive integers, got {value!r}")


class CondenseNetAgent(BaseAgent):
    config_schema = {
        **BaseAgent.config_schema,
        **Cifar10DataLoader.config_schema,
        "optimizer": torch_object_key(
            "torch.optim",
            "optimizer",
            {"type": "SGD", "args": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}},
            "a torch.optim class and its arguments",
        ),
        "stages": Key([14, 14, 14], list, "dense layers per dense block", check=_positive_ints),
        "growth": Key(
            [8, 16, 32], list, "growth rate (new channels per layer) of each dense block", check=_positive_ints
        ),
        "bottleneck": Key(4, int, "the 1x1 conv's output is bottleneck x growth channels", min=1),
        "group1x1": Key(4, int, "groups of the learned 1x1 group convolutions", min=1),
        "group3x3": Key(4, int, "groups of the 3x3 group convolutions", min=1),
        "condense_factor": Key(
            4, int, "each 1x1 group keeps 1/condense_factor of its inputs (C-1 pruning stages)", min=1
        ),
        "group_lasso_lambda": Key(0.0, float, "weight of the group-lasso term on the learned convs (0: off)", min=0.0),
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.arguments = {
            key: config[key] for key in ("stages", "growth", "bottleneck", "group1x1", "group3x3", "condense_factor")
        }
        try:
            net = CondenseNet(**self.arguments)
        except ValueError as e:
            key, _, problem = str(e).partition(": ")
            raise UserError(f"config: key '{key}': {problem}") from None
        self.model = self.prepare_model(net)
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.make_scheduler(self.optimizer)
        self.data_loader = Cifar10DataLoader(config)
        size = config.random_image_size if config.data_mode == "random" else 32
        self.input_shape = (3, size, size)
        self.condensed_path = self.checkpoint_dir / "condensed.pth"

    def progress(self) -> float:
        """The fraction of training done before this step (the authors' formula)."""
        return (self.epoch + self.batch_in_epoch / self.batches_per_epoch()) / self.max_epochs()

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        net = self.unwrap(self.model)
        before = net.condensation_stage()
        net.update_condensation(self.progress())
        if net.condensation_stage() != before:
            self.recorder.info(
                f"condensation stage {net.condensation_stage()} of {self.config.condense_factor - 1} "
                f"at epoch {self.epoch + 1}, step {self.global_step}"
            )
        x, y = self.to_device(batch)
        with self.autocast():
            loss = self.loss(self.model(x), y)
            if self.config.group_lasso_lambda:
                loss = loss + self.config.group_lasso_lambda * net.lasso_loss()
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}

    def make_metrics(self) -> dict[str, Metric]:
        return {"loss": Mean(), "accuracy": Accuracy(), "top5_accuracy": Accuracy(k=5)}

    def eval_step(self, batch, metrics: dict[str, Metric]) -> None:
        x, y = self.to_device(batch)
        output = self.unwrap(self.model)(x)
        metrics["loss"].update(self.loss(output, y), len(y))
        metrics["accuracy"].update(output, y)
        metrics["top5_accuracy"].update(output, y)

    def train(self) -> None:
        """BaseAgent's epochs, then the condensed network to checkpoints/condensed.pth."""
        super().train()
        trained = (self.epoch, self.global_step) != self.progress_at_start
        if self.status in ("finished", "early stopped") and (trained or not self.condensed_path.exists()):
            self.save_condensed()

    def save_condensed(self) -> None:
        """The test-time network in BaseAgent's checkpoint format, marked ``condensed``: of the averaged
        weights when the run keeps an EMA (what validation and mode=test on last.pth evaluate)."""
        ema = self.callbacks.find(EMACallback)
        net = ema.averages["model"].module if ema is not None else self.unwrap(self.model)
        if not net.fully_condensed():
            self.recorder.warning(
                f"not fully condensed after {self.global_step} steps (the last stage comes at half of training): "
                f"{self.condensed_path.name} not written"
            )
            return
        if not distributed.is_main():
            return
        with distributed.main_only():
            state = checkpoint.agent_state(self)
        state.update(models={"model": condense(net).state_dict()}, optimizers={}, schedulers={}, callbacks={})
        state["condensed"] = True
        checkpoint.atomic_save(state, self.condensed_path)
        self.recorder.info(f"condensed test-time model written to {self.condensed_path}")

    def read_checkpoint(self, path: Path) -> dict:
        """A condensed checkpoint (``mode=test`` only) swaps in the condensed architecture before it is loaded."""
        state = super().read_checkpoint(path)
        if state.get("condensed"):
            if self.config.mode == "train":
                raise UserError(
                    f"{path}: a condensed test-time model cannot be trained further; evaluate it with mode=test, "
                    "or resume training from last.pth"
                )
            self.models.clear()
            self.model = self.prepare_model(condensed_skeleton(**self.arguments))
        return state

    def export_input(self) -> ExportInput:
        """mode=export: the condensed network (of the checkpoint loaded: condensed.pth as it is, a masked one
        converted here), normalised 32x32 CIFAR images as validation gets them -> class scores."""
        net = self.unwrap(self.model)
        if not any(isinstance(m, CondensedBlock) for m in net.modules()):  # a masked network: condense it here
            net = condense(net)
        size = self.input_shape[1]
        preprocessing = {"colour_mode": "RGB", "size": [size, size], "scale": 1 / 255, "mean": MEAN, "std": STD}
        images = first_inputs(self.data_loader.valid_loader)
        return ExportInput(net, images, "image", "scores", preprocessing=preprocessing)

    def summary_extra(self) -> dict:
        """Multiply-adds and parameters (the authors' conventions, batch 1) of this net and of its condensed form."""
        flops, _ = count_flops(self.unwrap(self.model), self.input_shape)
        condensed_flops, condensed_params = count_flops(condensed_skeleton(**self.arguments), self.input_shape)
        return {"flops": flops, "condensed_params": condensed_params, "condensed_flops": condensed_flops}
