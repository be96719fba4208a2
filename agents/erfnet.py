"""ERFNet semantic segmentation on Pascal VOC 2012: what differs from BaseAgent's supervised loop.

- the loss is cross-entropy ignoring label 255, optionally class-weighted (``class_weights``);
- validation accumulates a confusion matrix over the whole set (summed over DDP ranks): mean IoU,
  pixel accuracy, and per-class IoU in the log and summary.json; after each validation a few
  images | ground truth | prediction go to ``out/valid_epoch_NNN.png`` and TensorBoard;
- ``encoder_checkpoint`` starts the encoder from another run's weights;
- ``mode=predict predict_input=DIR_OR_FILE`` writes a colourised mask and an overlay per image
  to ``out/predict/``. ``mode=test`` evaluates the val split (VOC's test masks are not public).
"""

from __future__ import annotations

import dataclasses
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from agents.base import BaseAgent
from agents.common_keys import PREDICT_INPUT
from datasets.image_files import ImageFiles, predict_files
from datasets.voc import IGNORE, MEAN, STD, VocDataLoader, class_names, class_weights, on_device, pad_to, padded_size
from graphs.models.erfnet import ERFNet
from utils.config import Key, repo_path
from utils.errors import UserError
from utils.examples.palette import colourise, overlay
from utils.run import checkpoint
from utils.run.export import ExportInput
from utils.training import distributed
from utils.training.metrics import ConfusionMatrix, Mean, Metric

FIRST_WEIGHT = "initial_block.conv.weight"  # how an ERFNet encoder is recognised in a checkpoint's model


def _class_weights_check(value, where: str, source: str) -> None:
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if value != "auto" and not (numbers and value and all(v >= 0 for v in value)):
        raise UserError(
            f"{source}: key '{where}': expected null, \"auto\" or a list of num_classes non-negative numbers, "
            f"got {value!r}"
        )


class ERFNetAgent(BaseAgent):
    config_schema = {
        **BaseAgent.config_schema,
        **VocDataLoader.config_schema,
        "monitor": dataclasses.replace(BaseAgent.config_schema["monitor"], default="max valid/mean_iou"),
        "class_weights": Key(
            None,
            (str, list),
            "null: unweighted loss; auto: ENet weights 1/ln(1.02 + class frequency) of the training masks, "
            "computed once and cached in data_root; or a list of num_classes numbers",
            nullable=True,
            check=_class_weights_check,
        ),
        "encoder_checkpoint": Key(
            None, str, "a checkpoint of this template whose model holds an ERFNet encoder: start from it", nullable=True
        ),
        "show_images": Key(4, int, "validation images drawn into out/valid_epoch_NNN.png (0: none)", min=0, max=64),
        "predict_input": PREDICT_INPUT,
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        model = ERFNet(config.num_classes)
        # A start from scratch only: a resumed run, mode=test and mode=predict load their own checkpoint over it.
        fresh = config.mode == "train" and checkpoint.resume_path(self.checkpoint_dir, config.resume) is None
        if config.encoder_checkpoint and fresh:
            self._load_encoder(model, repo_path(config.encoder_checkpoint))
        # The encoder's own classifier (for encoder-only training) is not used by the whole network: frozen,
        # so that DDP does not wait for gradients it never gets.
        model.encoder.output_conv.requires_grad_(False)
        self.model = self.prepare_model(model)
        self.class_names = class_names(config.num_classes)
        predicting = config.mode == "predict"  # needs neither data nor a loss
        self.data_loader = VocDataLoader(config) if not predicting else None
        weights = self._class_weights() if not predicting else None
        self.loss = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.make_scheduler(self.optimizer)
        self.class_iou: dict[str, float | None] = {}
        self._matrix: ConfusionMatrix | None = None  # the confusion matrix of the validation under way
        self._shown: list[list[torch.Tensor]] = []  # rows (image, truth, prediction) of the validation picture

    # ----- building -------------------------------------------------------------------------

    def _class_weights(self) -> torch.Tensor | None:
        value = self.config.class_weights
        if value is None:
            return None
        weights = value
        if value == "auto":  # computed (and cached) by rank 0 alone; the other ranks get its numbers
            weights = distributed.on_main(class_weights, self.config)
        if len(weights) != self.config.num_classes:
            raise UserError(
                f"config: key 'class_weights': {len(weights)} weights for num_classes {self.config.num_classes}"
            )
        named = zip(self.class_names, weights, strict=True)
        self.recorder.info("class weights: " + ", ".join(f"{n} {w:.3g}" for n, w in named))
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _load_encoder(self, model: ERFNet, path: Path) -> None:
        """The encoder weights of ``path``'s model (its average where the run kept an EMA; any prefix); its
        classifier only where the classes match."""
        state = checkpoint.load_on_every_rank(path, self.recorder.info)
        averaged = state["callbacks"].get("ema", {})
        for name, weights in state["models"].items():
            weights = averaged[name]["module"] if name in averaged else weights
            prefixes = [k[: -len(FIRST_WEIGHT)] for k in weights if k.endswith(FIRST_WEIGHT)]
            if prefixes:
                break
        else:
            raise UserError(f"config: key 'encoder_checkpoint': {path} holds no ERFNet encoder")
        prefix = prefixes[0]
        encoder = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        own = model.encoder.state_dict()
        for key in ("output_conv.weight", "output_conv.bias"):
            if key in encoder and encoder[key].shape != own[key].shape:  # another dataset's classes
                del encoder[key]
        mismatch = f"config: key 'encoder_checkpoint': {path}: its encoder does not match ERFNet's"
        try:
            missing, unexpected = model.encoder.load_state_dict(encoder, strict=False)
        except RuntimeError as e:  # a tensor of another shape
            raise UserError(f"{mismatch} ({str(e).strip().splitlines()[-1].strip()})") from None
        problems = [k for k in missing if not k.startswith("output_conv.")] + list(unexpected)
        if problems:
            raise UserError(f"{mismatch} ({'missing' if problems[0] in missing else 'unexpected'} '{problems[0]}')")

    def to_device(self, batch: Any) -> Any:
        """BaseAgent's; a training batch comes as uint8 images and masks (with ``augment_on: "device"``, whole
        images, augmented here first) and is standardised on the device (datasets/voc.py: ``on_device``)."""
        batch = super().to_device(batch)
        if isinstance(batch, dict):
            batch = self.data_loader.augment_on_device(batch)
        if batch[0].dtype == torch.uint8:
            batch = super().to_device(on_device(*batch, self.config.get("channels_last", False)))
        return batch

    # ----- validation -----------------------------------------------------------------------

    def make_metrics(self) -> dict[str, Metric]:
        self._matrix = ConfusionMatrix(self.config.num_classes, IGNORE)
        return {"loss": Mean(), "mean_iou": self._matrix}

    def metric_names(self) -> list[str]:
        return [*super().metric_names(), "valid/pixel_accuracy"]

    def eval_step(self, batch, metrics: dict[str, Metric]) -> None:
        x, y = self.to_device(batch)
        scores = self.unwrap(self.model)(x)
        # The set's (class-weighted) cross-entropy: sums over pixels, divided by the summed weights at the end.
        counted = y != IGNORE
        total = F.cross_entropy(scores.float(), y, weight=self.loss.weight, ignore_index=IGNORE, reduction="sum")
        weight = self.loss.weight[y[counted]].sum() if self.loss.weight is not None else counted.sum()
        metrics["loss"].update(total / weight.clamp(min=1e-12), weight)
        prediction = scores.argmax(dim=1)
        metrics["mean_iou"].update(prediction, y)
        for i in range(min(len(x), self.config.show_images - len(self._shown))):
            self._shown.append([to_uint8(x[i]).cpu(), colourise(y[i]).cpu(), colourise(prediction[i]).cpu()])

    def validate(self, loader=None, split: str = "valid", limit: int | None | str = "config") -> dict[str, float]:
        """BaseAgent's validation, plus pixel accuracy, per-class IoU (logged) and the picture of a few images."""
        self._shown = []
        results = super().validate(loader, split, limit)
        results[f"{split}/pixel_accuracy"] = self._matrix.pixel_accuracy()
        named = zip(self.class_names, self._matrix.class_iou(), strict=True)
        self.class_iou = {n: (v if v == v else None) for n, v in named}  # NaN (absent class) -> null in JSON
        shown = "  ".join(f"{n} {v:.3f}" for n, v in self.class_iou.items() if v is not None)
        self.recorder.info(f"{split} IoU per class (absent classes left out): {shown}")
        if self._shown:
            file = f"valid_epoch_{self.epoch:03d}.png" if split == "valid" else f"{split}.png"
            self.recorder.image(
                f"{split}/image_truth_prediction", labelled_grid(self._shown), self.global_step, file=file
            )
            self._shown = []
        return results

    def summary_extra(self) -> dict:
        return {"class_iou": self.class_iou} if self.class_iou else {}

    def test(self) -> None:
        """BaseAgent's test on the val split, with the per-class IoU added to summary.json."""
        super().test()
        summary = self.recorder.read_json("summary.json")
        self.recorder.write_json("summary.json", {**summary, "test/class_iou": self.class_iou})

    # ----- predict and export -----------------------------------------------------------------

    def export_input(self) -> ExportInput:
        """mode=export: normalised RGB images (B, 3, H, W), H and W any multiples of 8 -> per-pixel class scores;
        verified on the first validation images, cut to their common size."""
        images = [x for x, _ in islice(self.data_loader.valid_loader, 5)]
        h, w = (min(x.shape[d] for x in images) // 8 * 8 for d in (2, 3))
        preprocessing = {
            "colour_mode": "RGB",
            "size": "any multiple of 8, from 16",
            "scale": 1 / 255,
            "mean": MEAN,
            "std": STD,
        }
        return ExportInput(
            self.unwrap(self.model),
            torch.cat([x[..., :h, :w] for x in images]),
            "image",
            "scores",
            multiple_of={2: 8, 3: 8},
            preprocessing=preprocessing,
            class_names=self.class_names,
        )

    def predict(self) -> None:
        """A colourised mask and an overlay per input image, in out/predict/<name>_{mask,overlay}.png."""
        files = self._predict_files()
        # The input checked whole (each file's header) before any earlier output is: its mistake is the one to fix.
        images = ImageFiles([(f, i) for i, f in enumerate(files)], "RGB", skip_bad=self.config.skip_bad_files)
        out = self.run_dir / "out" / "predict"

        def refuse_earlier() -> None:  # rank 0 looks, before any rank writes: no rank sees another's files
            names = [p for f in files for p in (out / f"{f.stem}_mask.png", out / f"{f.stem}_overlay.png")]
            taken = [p for p in names if p.exists()]
            if taken:
                raise UserError(
                    f"{taken[0]}: written by an earlier mode=predict ({len(taken)} file(s) would be replaced); "
                    "move or delete them first (nothing is overwritten)"
                )

        distributed.on_main(refuse_earlier)
        path = self.load_test_checkpoint()
        model = self.unwrap(self.model).eval()
        mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(3, 1, 1)
        written: list[Path] = []  # the Recorder's (rank 0's)
        predicted = 0
        try:
            for image, j in images.readable():
                h, w = image.shape[-2:]
                x = (image.to(self.device).float() / 255 - mean) / std
                x, _ = pad_to(x, None, *padded_size(h, w))
                with torch.no_grad(), self.autocast():
                    prediction = model(x[None])[0, :, :h, :w].argmax(dim=0).cpu()
                for name, picture in (("mask", colourise(prediction)), ("overlay", overlay(image, prediction))):
                    file = out / f"{files[j].stem}_{name}.png"
                    if self.recorder.enabled:  # noted before it is written: a stop while writing removes it too
                        written.append(file)
                    self.recorder.png(f"predict/{file.name}", picture)
                predicted += 1
        except BaseException:  # stopped (an unreadable image here or on another rank, a signal): this run's files
            for done in written:  # go, so that a rerun (the advised skip_bad_files=true) is not refused
                done.unlink(missing_ok=True)
            raise
        self.status = "predicted"
        given = f"{predicted} image(s) from {self.config.predict_input}"
        self.recorder.info(f"predict: {given} with {path}; masks and overlays in {out}")

    def _predict_files(self) -> list[Path]:
        files = predict_files(self.config.predict_input)
        stems = [p.stem for p in files]
        twins = sorted({s for s in stems if stems.count(s) > 1})
        if twins:  # a.jpg and a.png would write the same a_mask.png
            raise UserError(f"{files[0].parent}: several images named '{twins[0]}' (different suffixes); rename one")
        return files


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A normalised image (3, H, W) back to uint8 RGB."""
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return (image.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


COLUMNS = ("image", "truth", "prediction")
LABEL_HEIGHT = 14  # pixels of the header that names the columns


def labelled_grid(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """Rows of uint8 panels (3, h, w) in columns as wide as the widest panel (padded with black), under a
    header naming the columns (COLUMNS)."""
    from PIL import ImageDraw

    width = max(p.shape[-1] for row in rows for p in row)
    header = Image.new("RGB", (width * len(COLUMNS), LABEL_HEIGHT))
    draw = ImageDraw.Draw(header)
    for i, label in enumerate(COLUMNS):
        draw.text((i * width + 3, 1), label, fill=(255, 255, 255))
    lines = [torch.from_numpy(np.array(header)).permute(2, 0, 1)]
    lines += [torch.cat([nn.functional.pad(p, (0, width - p.shape[-1])) for p in row], dim=2) for row in rows]
    return torch.cat(lines, dim=1)
