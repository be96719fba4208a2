"""Template data loader: images in class folders, or synthetic ones. Replace it with your dataset.

Keep the three data modes: ``random`` (synthetic images, as here), ``folder`` (your files under
data_root; here torchvision's ImageFolder layout) and ``download`` (where your data has a source).
Build every loader with ``make_loader``: that is what makes DDP and exact resume work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from datasets.common import FOLD_KEYS, data_root, fold_split, held_out, random_images
from datasets.image_files import SKIP_BAD_FILES, ImageFiles, class_folders, predict_files
from utils.config import Key
from utils.errors import UserError
from utils.training.data import TensorBatches, make_loader


def _to_float(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> float in [0, 1], as the folder mode's transform gives them."""
    return images.float().div_(255), labels


def _transform(config) -> v2.Transform:
    """What the folder mode (and mode=predict) does to an image file: resize, scale to [0, 1]."""
    size = config.image_size
    return v2.Compose([v2.Resize((size, size)), v2.ToDtype(torch.float32, scale=True)])


def _colour_mode(config) -> str:
    return "RGB" if config.channels == 3 else "L"


class ExampleDataLoader:
    """``train_loader``, ``valid_loader`` (and ``test_loader`` with mode=test), ``num_classes``, and
    ``class_names`` (the class folders' names; None for synthetic images)."""

    config_schema = {
        "image_size": Key(32, int, "images are resized to image_size x image_size", min=4, max=1024),
        "channels": Key(3, int, "image channels: 3 (RGB) or 1 (grey)", choices=(1, 3)),
        "num_classes": Key(
            None, int, "number of classes (null: the class folders' count; random data: 4)", min=2, max=1000
        ),
        "valid_fraction": Key(
            0.2,
            float,
            "folder mode without a valid/ folder: this part of train/ (chosen by the seed) validates",
            min=1e-6,
            max=0.5,
        ),
        "random_size": Key(640, int, "data_mode=random: number of synthetic images", min=3, max=20_000),
        "skip_bad_files": SKIP_BAD_FILES,
        **FOLD_KEYS,
    }

    def __init__(self, config) -> None:
        self.class_names: list[str] | None = None
        # mode=test reads only the test split; training reads train and valid.
        splits = ("test",) if config.mode == "test" else ("train", "valid")
        if config.data_mode == "random":
            self.num_classes = config.num_classes or 4
            data = self._random(config, self.num_classes)
        elif config.data_mode == "folder":
            data = self._folders(config, splits)
        else:
            raise UserError("config: key 'data_mode': this dataset has nothing to download; use random or folder")
        self.config = config
        # What the network's input is made of (mode=export writes it to export.json).
        self.preprocessing = {
            "colour_mode": _colour_mode(config),
            "size": [config.image_size, config.image_size],
            "resize": "a JPEG decoded at libjpeg's 1/2, 1/4 or 1/8 scale if that still covers size, then resized "
            "to size (bilinear, antialiased)",
            "scale": 1 / 255,
            "mean": [0.0] * config.channels,
            "std": [1.0] * config.channels,
        }
        kwargs = {"seed": config.seed, "num_workers": config.num_workers}
        if "train" in splits:
            self.train_loader = make_loader(data["train"], config.batch_size, train=True, **kwargs)
            self.valid_loader = make_loader(data["valid"], config.batch_size, train=False, **kwargs)
        else:
            self.test_loader = make_loader(data["test"], config.batch_size, train=False, **kwargs)

    @staticmethod
    def _random(config, num_classes: int) -> dict[str, TensorBatches]:
        """Images with a class pattern plus noise: a learnable signal, so a smoke run shows the loss falling."""
        shape = (config.channels, config.image_size, config.image_size)
        images, labels = random_images(config.random_size, shape, num_classes, config.seed)
        n = max(1, len(images) // 5)  # a fifth each for valid and test: the test fifth is images[n : 2n]
        pool = [i for i in range(len(images)) if not n <= i < 2 * n]  # valid, then train
        train, valid = fold_split(config, len(pool)) or (range(n, len(pool)), range(n))
        split = {"train": [pool[i] for i in train], "valid": [pool[i] for i in valid], "test": range(n, 2 * n)}
        return {k: TensorBatches(images[list(v)], labels[list(v)], transform=_to_float) for k, v in split.items()}

    def predict_loader(self, given: str | None) -> tuple[list[Path], DataLoader]:
        """The image files of ``given`` (a file or a folder) and batches of them as the folder mode reads images
        (any size and colour mode made ``channels`` x image_size x image_size in [0, 1]); labels: file indices."""
        files = predict_files(given)
        samples, config = [(f, i) for i, f in enumerate(files)], self.config
        images = ImageFiles(
            samples, _colour_mode(config), _transform(config), config.skip_bad_files, min_size=config.image_size
        )
        return files, make_loader(images, self.config.batch_size, train=False, seed=self.config.seed)

    def _folders(self, config, splits: tuple[str, ...]) -> dict[str, ImageFiles]:
        """data_root/example/<split>/<class>/<image>: any image format PIL reads.

        Without a valid/ folder, valid_fraction of train/ validates."""
        root = data_root(config) / "example"
        how = f"Put your images in {root}/<split>/<class>/ (train/; valid/, test/ optional), or use data_mode=random."
        if splits == ("test",):
            how = f"mode=test evaluates the test split: put its images in {root}/test/<class>/"
        mode, transform = _colour_mode(config), _transform(config)
        if "valid" in splits and (config.folds or not (root / "valid").exists()):
            splits = ("train",)  # folds are cut from train/ (a valid/ folder is left out)
        data, class_names = {}, {}
        for split in splits:
            samples, class_names[split] = class_folders(root / split, how)
            if class_names[split] != class_names[splits[0]]:
                raise UserError(
                    f"{root}: {splits[0]} and {split} have different class folders "
                    f"({', '.join(class_names[splits[0]])} vs {', '.join(class_names[split])})"
                )
            # min_size: the transform shrinks images to image_size, so a large JPEG is decoded at a reduced scale
            data[split] = ImageFiles(
                samples, mode, transform, skip_bad=config.skip_bad_files, min_size=config.image_size
            )
        self.class_names = class_names[splits[0]]
        self.num_classes = len(self.class_names)
        if self.num_classes < 2:
            raise UserError(
                f"{root / splits[0]}: one class folder ({self.class_names[0]}/); a classifier needs two or more, "
                "one per class"
            )
        if config.num_classes not in (None, self.num_classes):
            raise UserError(
                f"{root / splits[0]}: {self.num_classes} class folders, the config's num_classes is "
                f"{config.num_classes} (set num_classes={self.num_classes}, or null to take the folders' count)"
            )
        if "valid" not in data and "test" not in data:
            n = len(data["train"])
            train, valid = fold_split(config, n) or held_out(n, config.valid_fraction, config.seed, "valid split")
            data = {"train": data["train"].subset(train), "valid": data["train"].subset(valid)}
        return data
