"""mode=predict for classifiers: each image's class, its probability and the top 5, in out/predict/predictions.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from utils.errors import UserError
from utils.run.recorder import Recorder

FILE = "predict/predictions.csv"
TOP = 5


def classify(agent, predict_loader: Callable[[str | None], tuple[list[Path], Iterable]]) -> None:
    """mode=predict of a classifier ``agent`` (a BaseAgent with ``model``): ``predict_loader(predict_input)``
    gives the image files and batches of (inputs, file indices) made as validation makes its own; the
    model of best.pth (or ``resume``) classifies them into out/predict/predictions.csv."""
    files, batches = predict_loader(agent.config.predict_input)  # the input first: its mistake is the one to fix
    out = agent.run_dir / "out" / FILE
    if out.exists():
        raise UserError(f"{out}: written by an earlier mode=predict; move or delete it first (nothing is overwritten)")
    path = agent.load_test_checkpoint()
    names = agent.class_names()
    rows = class_predictions(agent.unwrap(agent.model), batches, files, names, agent.device)
    write_predictions(agent.recorder, rows)
    agent.status = "predicted"
    agent.recorder.info(f"predict: {len(rows)} image(s) from {agent.config.predict_input} with {path}: {out}")


@torch.no_grad()
def class_predictions(
    model: nn.Module, batches: Iterable, files: list[Path], class_names: list[str] | None, device: torch.device
) -> list[dict[str, str]]:
    """One row per file: file, class, probability, top-5 ("name:probability ..."); ``batches`` yield (inputs,
    file indices). Probabilities are the softmax of the outputs (of log-probabilities too: the same numbers)."""
    model.eval()
    rows: dict[int, dict[str, str]] = {}
    for x, index in batches:
        probabilities = torch.softmax(model(x.to(device)).float(), dim=1).cpu()
        values, classes = probabilities.topk(min(TOP, probabilities.shape[1]), dim=1)
        for i, p, c in zip(index.tolist(), values.tolist(), classes.tolist(), strict=True):
            names = [class_names[k] if class_names else str(k) for k in c]
            rows[i] = {
                "file": str(files[i]),
                "class": names[0],
                "probability": f"{p[0]:.6f}",
                "top5": " ".join(f"{n}:{v:.6f}" for n, v in zip(names, p, strict=True)),
            }
    return [rows[i] for i in sorted(rows)]


def write_predictions(recorder: Recorder, rows: list[dict[str, str]]) -> None:
    """out/predict/predictions.csv (through the Recorder: rank 0 writes)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "class", "probability", "top5"])
    writer.writeheader()
    writer.writerows(rows)
    recorder.text(FILE, buf.getvalue())
