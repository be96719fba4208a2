"""Loggers: the backends the Recorder writes a run's scalars and images to (metrics.csv and summary.json are the
Recorder's own, always written). Each is a callback too, so a backend can open and close a tracked run with
training and keep its state (a tracked run's id) in the checkpoint. The ``loggers`` key names them; a backend's
library (mlflow, wandb) is imported only when a config names it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from utils.config import did_you_mean
from utils.errors import UserError
from utils.run.loggers.base import Logger, TensorBoardLogger
from utils.run.loggers.csv_logger import CSVLogger
from utils.run.loggers.mlflow_logger import MLflowLogger
from utils.run.loggers.wandb_logger import WandbLogger

__all__ = ["LOGGERS", "CSVLogger", "Logger", "MLflowLogger", "TensorBoardLogger", "WandbLogger", "build_loggers"]

# The ``loggers`` key's names -> the backend's class, built with the run directory and the config.
LOGGERS: dict[str, type[Logger]] = {
    "tensorboard": TensorBoardLogger,
    "mlflow": MLflowLogger,
    "wandb": WandbLogger,
    "csv": CSVLogger,
}
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # optional: pip install them to use these loggers


def check_loggers(value: list, where: str, source: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(
            f"{source}: key '{where}': expected a list of logger names ({', '.join(LOGGERS)}), got {value!r}"
        )
    for name in value:
        if name not in LOGGERS:
            hint = did_you_mean(name, list(LOGGERS))
            raise UserError(f"{source}: key '{where}': no logger '{name}' (there are {', '.join(LOGGERS)}){hint}")
        package = PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise UserError(
                f"{source}: key '{where}': logger '{name}' needs the {package} package: pip install {package}"
            )
    if len(set(value)) < len(value):
        raise UserError(f"{source}: key '{where}': a logger named twice in {value!r}")


def build_loggers(names: list[str], run_dir: Path, config=None) -> list[Logger]:
    return [LOGGERS[name].build(run_dir, config) for name in names]
