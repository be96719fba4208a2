"""Template agent: ``python main.py new NAME`` copies it, with its network, data, config and test.

BaseAgent already trains, validates, checkpoints, resumes, logs and runs under torchrun.
Build your pieces in __init__; override a method only where your training differs:
- ``train_step(batch)``: one optimisation step (a GAN updates two models here);
- ``make_metrics()`` / ``eval_step(batch, metrics)``: what validation measures;
- ``extra_state()`` / ``load_extra_state(state)``: anything else a checkpoint must hold;
- ``export_input()``: what mode=export exports (utils/run/export.py): the network, a batch of the inputs it
  takes (validation's), their names and preprocessing; ``predict()``: mode=predict's outputs.
Images and files a run writes go through ``self.recorder`` (it writes on rank 0 only).
"""

from torch import nn

from agents.base import BaseAgent
from agents.common_keys import PREDICT_INPUT
from datasets.example import ExampleDataLoader
from graphs.models.example import Example
from utils.config import Key
from utils.run.export import ExportInput, first_inputs
from utils.run.predict import classify


class ExampleAgent(BaseAgent):
    # Your config keys, with defaults and documentation, next to the common ones.
    config_schema = {
        **BaseAgent.config_schema,
        **ExampleDataLoader.config_schema,
        "hidden": Key(16, int, "channels of the first convolution", min=1, max=1024),
        "predict_input": PREDICT_INPUT,
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        # Your data: an object with train_loader and valid_loader (and test_loader, optionally). Built first:
        # the model's output size is its number of classes; its class_names are kept with the run.
        self.data_loader = ExampleDataLoader(config)
        # Your model: prepare_model moves it to the device and wraps it for DDP.
        num_classes = self.data_loader.num_classes
        model = Example(config.channels, config.hidden, num_classes, config.image_size)
        self.model = self.prepare_model(model)
        # Your loss; BaseAgent.train_step calls self.loss(self.model(x), y).
        self.loss = nn.CrossEntropyLoss()
        # Optimizer and scheduler come from the config's {"type", "args"}.
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.scheduler = self.make_scheduler(self.optimizer)

    def export_input(self) -> ExportInput:
        """mode=export: the network, a batch of its inputs (validation images), names, and how inputs are made."""
        images = first_inputs(self.data_loader.valid_loader)
        model = self.unwrap(self.model)
        return ExportInput(model, images, "image", "scores", preprocessing=self.data_loader.preprocessing)

    def predict(self) -> None:
        """mode=predict predict_input=FILE_OR_FOLDER: each image's class, probability and top 5 in
        out/predict/predictions.csv; the images are read as the folder mode reads its own."""
        classify(self, self.data_loader.predict_loader)
