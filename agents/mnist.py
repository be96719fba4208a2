"""MNIST classification: a net chosen by ``net``, NLL loss, and BaseAgent's supervised loop unchanged; predict
and export."""

from agents.base import BaseAgent
from agents.common_keys import PREDICT_INPUT
from datasets.mnist import MnistDataLoader
from graphs.losses.nll import NLLLoss
from graphs.models.mnist import Mnist, SeedMnist
from utils.config import Key
from utils.run.export import ExportInput, first_inputs
from utils.run.predict import classify

NETS = {"examples": Mnist, "seed": SeedMnist}


class MnistAgent(BaseAgent):
    config_schema = {
        **BaseAgent.config_schema,
        **MnistDataLoader.config_schema,
        "net": Key("examples", str, "today's pytorch/examples net, or the seed's smaller one", choices=tuple(NETS)),
        "dropout": Key(0.5, float, "dropout probability before the last layer", min=0.0, max=1.0),
        "predict_input": PREDICT_INPUT,
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        self.model = self.prepare_model(NETS[config.net](dropout=config.dropout))
        self.loss = NLLLoss()
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.scheduler = self.make_scheduler(self.optimizer)
        self.data_loader = MnistDataLoader(config)

    def export_input(self) -> ExportInput:
        """mode=export: standardised 28x28 digits (as validation gets them) -> log-probabilities of the 10 digits."""
        images = first_inputs(self.data_loader.valid_loader)
        model = self.unwrap(self.model)
        return ExportInput(model, images, "image", "log_probs", preprocessing=self.data_loader.preprocessing)

    def predict(self) -> None:
        """mode=predict predict_input=FILE_OR_FOLDER: each image's digit, probability and top 5 in
        out/predict/predictions.csv; any image is made grey 28x28 and normalised as validation's are."""
        classify(self, self.data_loader.predict_loader)
