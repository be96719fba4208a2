"""Run under torchrun by tests/test_distributed.py: train, validate, dump this rank's results.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR CONFIG key=value ...

"{rank}" in a key=value is replaced by the rank (a per-rank experiments_dir: machines without shared storage).

Writes OUT_DIR/rank<r>.pt with the rank's final model state (parameters and buffers), whether it
holds SyncBatchNorm layers, and its (all-reduced) validation metrics, which only a test can see:
the agent itself writes from rank 0 alone. CONFIG may name ``BatchNormAgent`` or ``CountingAgent``, defined here,
or ``DropoutAgent`` (tests/conftest.py).
"""

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
from agents import AGENTS  # noqa: E402
from agents.example import ExampleAgent  # noqa: E402
from tests.conftest import TEST_AGENTS  # noqa: E402


class BatchNormAgent(ExampleAgent):
    """The template agent with a BatchNorm layer after its convolution."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.models.clear()
        net = nn.Sequential(
            nn.Conv2d(config.channels, config.hidden, 3, padding=1),
            nn.BatchNorm2d(config.hidden),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(config.hidden, self.data_loader.num_classes),
        )
        self.model = self.prepare_model(net)
        self.optimizer = self.make_optimizer(self.model.parameters())


class CountingAgent(ExampleAgent):
    """The template agent counting its gradient all-reduces (calls of a DDP communication hook)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.allreduces = 0
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            self.model.register_comm_hook(None, self._count)

    def _count(self, state, bucket):
        self.allreduces += 1
        return allreduce_hook(state, bucket)


AGENTS["BatchNormAgent"] = AGENTS["CountingAgent"] = "tests.ddp_worker"
AGENTS.update(TEST_AGENTS)


def run(out: Path, config_path: str, overrides: list[str]) -> None:
    # "{rank}" in an override becomes this rank's number: each rank can see its own storage (several machines).
    overrides = [o.replace("{rank}", os.environ.get("RANK", "0")) for o in overrides]
    config, cls = main.load_config(config_path, overrides)
    agent = cls(config)
    try:
        agent.run()
        metrics = agent.validate()
        model = agent.unwrap(agent.model)
        torch.save(
            {
                "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "metrics": metrics,
                "world_size": agent.world_size,
                "global_step": agent.global_step,
                "optimizer_steps": agent.optimizer_steps,
                "allreduces": getattr(agent, "allreduces", None),
                "sync_bn": any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
            },
            out / f"rank{agent.rank}.pt",
        )
    finally:
        agent.finalize()


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
