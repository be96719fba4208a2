"""An agent with two models and two optimizers (a GAN) fits BaseAgent by overriding train_step only."""

import torch
import torch.nn.functional as F
from torch import nn

from agents.base import BaseAgent
from tests.conftest import assert_same_tensors, load
from utils.config import Key, to_easydict, torch_object_key, validate
from utils.training.data import TensorBatches, make_loader
from utils.training.metrics import Mean


class TinyGanAgent(BaseAgent):
    """A 1-D GAN: the generator learns to map noise onto samples of N(3, 0.5)."""

    config_schema = {
        **BaseAgent.config_schema,
        "optimizer_g": torch_object_key("torch.optim", "optimizer", {"type": "Adam", "args": {"lr": 0.01}}),
        "optimizer_d": torch_object_key("torch.optim", "optimizer", {"type": "Adam", "args": {"lr": 0.01}}),
        "noise_dim": Key(4, int, "generator input size", min=1),
        "monitor": Key("min valid/distance", str, "best.pth by the generated mean's distance to 3"),
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.netG = self.prepare_model(
            nn.Sequential(nn.Linear(config.noise_dim, 16), nn.ReLU(), nn.Linear(16, 1)), name="generator"
        )
        self.netD = self.prepare_model(
            nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)), name="discriminator"
        )
        self.optG = self.make_optimizer(self.netG.parameters(), name="generator", key="optimizer_g")
        self.optD = self.make_optimizer(self.netD.parameters(), name="discriminator", key="optimizer_d")
        real = 3 + 0.5 * torch.randn(512, 1, generator=torch.Generator().manual_seed(0))
        self.data_loader = type("Data", (), {})()
        self.data_loader.train_loader = make_loader(TensorBatches(real), config.batch_size, train=True, seed=1)
        self.data_loader.valid_loader = make_loader(TensorBatches(real[:64]), 64, train=False, seed=1)

    def train_step(self, batch) -> dict:
        (real,) = self.to_device(batch)
        ones = torch.ones(len(real), 1, device=self.device)  # on the agent's device: the pattern to copy
        zeros = torch.zeros_like(ones)
        fake = self.netG(torch.randn(len(real), self.config.noise_dim, device=self.device))
        loss_d = F.binary_cross_entropy_with_logits(self.netD(real), ones) + F.binary_cross_entropy_with_logits(
            self.netD(fake.detach()), zeros
        )
        self.optimize(loss_d, self.optD)
        loss_g = F.binary_cross_entropy_with_logits(self.netD(fake), ones)
        self.optimize(loss_g, self.optG)
        return {"loss": loss_g.detach(), "loss_d": loss_d.detach()}

    def make_metrics(self) -> dict:
        return {"distance": Mean()}

    def eval_step(self, batch, metrics) -> None:
        fake = self.unwrap(self.netG)(torch.randn(256, self.config.noise_dim, device=self.device))
        metrics["distance"].update((fake.mean() - 3).abs(), 1)


def make(exps, **changes):
    raw = {"exp_name": "gan", "agent": "TinyGanAgent", "data_mode": "random", "experiments_dir": str(exps), **changes}
    raw.setdefault("batch_size", 32)
    return TinyGanAgent(to_easydict(validate(raw, TinyGanAgent.config_schema, "gan.json")))


def run(exps, **changes) -> None:
    agent = make(exps, **changes)
    try:
        agent.run()
    finally:
        agent.finalize()


def test_gan_agent_learns_checkpoints_both_models_and_resumes_exactly(exps):
    run(exps, max_epoch=4, exp_name="straight")
    run(exps, max_epoch=2, exp_name="resumed")
    run(exps, max_epoch=4, exp_name="resumed")
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("straight", "resumed"))
    assert set(a["models"]) == {"generator", "discriminator"}
    assert set(a["optimizers"]) == {"generator", "discriminator"}
    for key in ("models", "optimizers"):
        assert_same_tensors(a[key], b[key], key)
    assert a["best"] < 1.5  # the generated mean moved from about 0 towards 3
