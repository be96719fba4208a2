"""Template data loader: images in class folders, or synthetic ones. Replace it with your dataset.

Keep the three data modes: ``random`` (synthetic images, as here), ``folder`` (your files under
data_root; here torchvision's ImageFolder layout) and ``download`` (where your data has a source).
Build every loader with ``make_loader``: that is what makes DDP and exact resume work.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from datasets.common import data_root, random_images
from datasets.image_files import SKIP_BAD_FILES, ImageFiles, class_folders
from utils.config import Key
from utils.data import TensorBatches, make_loader
from utils.errors import UserError

SPLITS = ("train", "valid")


def _to_float(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> float in [0, 1], as the folder mode's transform gives them."""
    return images.float().div_(255), labels


class ExampleDataLoader:
    config_schema = {
        "image_size": Key(32, int, "images are resized to image_size x image_size", min=4, max=1024),
        "channels": Key(3, int, "image channels: 3 (RGB) or 1 (grey)", choices=(1, 3)),
        "num_classes": Key(4, int, "number of classes (folder mode: the number of class folders)", min=2, max=1000),
        "random_size": Key(512, int, "data_mode=random: number of synthetic images", min=2, max=20_000),
        "skip_bad_files": SKIP_BAD_FILES,
    }

    def __init__(self, config) -> None:
        if config.data_mode == "random":
            # Images with a class pattern plus noise: a learnable signal, so a smoke run shows the loss falling.
            shape = (config.channels, config.image_size, config.image_size)
            images, labels = random_images(config.random_size, shape, config.num_classes, config.seed)
            n_valid = max(1, len(images) // 5)
            train = TensorBatches(images[n_valid:], labels[n_valid:], transform=_to_float)
            valid = TensorBatches(images[:n_valid], labels[:n_valid], transform=_to_float)
        elif config.data_mode == "folder":
            train, valid = self._folders(config)
        else:
            raise UserError("config: key 'data_mode': the example data has nothing to download; use random or folder")
        kwargs = {"seed": config.seed, "num_workers": config.num_workers}
        self.train_loader = make_loader(train, config.batch_size, train=True, **kwargs)
        self.valid_loader = make_loader(valid, config.batch_size, train=False, **kwargs)

    @staticmethod
    def _folders(config) -> tuple[ImageFiles, ImageFiles]:
        """data_root/example/{train,valid}/<class>/<image>: any image format PIL reads."""
        root = data_root(config) / "example"
        how = f"Put your images in {root}/train/<class>/ and {root}/valid/<class>/, or use data_mode=random."
        size, mode = config.image_size, "RGB" if config.channels == 3 else "L"
        transform = v2.Compose([v2.Resize((size, size)), v2.ToDtype(torch.float32, scale=True)])
        datasets, class_names = [], {}
        for split in SPLITS:
            samples, class_names[split] = class_folders(root / split, how)
            if len(class_names[split]) != config.num_classes:
                raise UserError(
                    f"{root / split}: {len(class_names[split])} class folders, the config's num_classes is "
                    f"{config.num_classes} (set num_classes={len(class_names[split])}?)"
                )
            datasets.append(ImageFiles(samples, mode, transform, skip_bad=config.skip_bad_files))
        if class_names["train"] != class_names["valid"]:
            raise UserError(
                f"{root}: train and valid have different class folders "
                f"({', '.join(class_names['train'])} vs {', '.join(class_names['valid'])})"
            )
        return datasets[0], datasets[1]
