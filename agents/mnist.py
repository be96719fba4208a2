"""MNIST classification: a net chosen by ``net``, NLL loss, and BaseAgent's supervised loop unchanged."""

from agents.base import BaseAgent
from datasets.mnist import MnistDataLoader
from graphs.losses.nll import NLLLoss
from graphs.models.mnist import Mnist, SeedMnist
from utils.config import Key

NETS = {"examples": Mnist, "seed": SeedMnist}


class MnistAgent(BaseAgent):
    config_schema = {
        **BaseAgent.config_schema,
        **MnistDataLoader.config_schema,
        "net": Key("examples", str, "today's pytorch/examples net, or the seed's smaller one", choices=tuple(NETS)),
        "dropout": Key(0.5, float, "dropout probability before the last layer", min=0.0, max=1.0),
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = self.prepare_model(NETS[config.net](dropout=config.dropout))
        self.loss = NLLLoss()
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.scheduler = self.make_scheduler(self.optimizer)
        self.data_loader = MnistDataLoader(config)
