"""MNIST classification: the seed's net, NLL loss, and BaseAgent's supervised loop unchanged."""

from agents.base import BaseAgent
from datasets.mnist import MnistDataLoader
from graphs.losses.nll import NLLLoss
from graphs.models.mnist import Mnist
from utils.config import Key


class MnistAgent(BaseAgent):
    config_schema = {
        **BaseAgent.config_schema,
        **MnistDataLoader.config_schema,
        "dropout": Key(0.5, float, "dropout probability of the net", min=0.0, max=1.0),
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = self.prepare_model(Mnist(dropout=config.dropout))
        self.loss = NLLLoss()
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.scheduler = self.make_scheduler(self.optimizer)
        self.data_loader = MnistDataLoader(config)
