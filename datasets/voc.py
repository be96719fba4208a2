"""Pascal VOC 2012 semantic segmentation: 21 classes (background + 20 objects), label 255 ignored.

Modes: ``download`` (torchvision's VOCSegmentation fetches VOCtrainval_11-May-2012.tar into
data_root), ``folder`` (the tree that tar unpacks to, already under data_root:
``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}``;
masks are palette PNGs whose indices are the labels) and ``random`` (synthetic shapes whose class
is their colour: learnable, for smoke runs and tests).

Training samples are scaled by a random factor, cropped to ``crop_size`` (padded where smaller:
image 0, mask 255) and flipped, image and mask together (``ScaleCropFlip``; masks are resized
nearest-neighbour). Training batches leave the loader as uint8 images and masks, standardised
on the training device (``on_device``). Validation uses whole images, padded in a batch to a common size
that is a multiple of 8 (ERFNet's need), the padding labelled 255, so it counts nowhere.

Class weights (``class_weights: "auto"``), the ENet recipe 1 / ln(1.02 + class frequency) over
the training masks' pixels, are computed on first use and cached in data_root; or ahead of time:

    python -m datasets.voc class-weights --data-root data
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

from datasets.common import data_root, fetched_root, missing
from datasets.image_files import SKIP_BAD_FILES, ImageFiles
from utils.config import Key, repo_path
from utils.errors import Parser, UserError
from utils.examples.palette import VOC_PALETTE
from utils.run.recorder import DATA_LOG as log
from utils.run.recorder import write_text_atomic
from utils.training.data import EpochSeeded, make_loader
from utils.training.seeding import derive_seed

CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IGNORE = 255  # VOC's object borders and "difficult" regions; our padding
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as for a pretrained encoder
STRIDE = 8  # ERFNet halves the resolution three times: sizes must be multiples of 8
TREE = Path("VOCdevkit") / "VOC2012"
MASKS = "SegmentationClass"  # VOC's palette PNGs; SBD's augmented set ships grey ones (SegmentationClassAug)
HOW = (
    "Unpack VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012/) into data_root so that "
    "VOCdevkit/VOC2012/ holds JPEGImages, SegmentationClass and ImageSets/Segmentation, or use "
    "data_mode=download on a machine with internet; to try the pipeline now, use data_mode=random."
)


def class_names(num_classes: int) -> list[str]:
    """VOC's names for its 21 classes, ``class_N`` otherwise."""
    return list(CLASSES) if num_classes == len(CLASSES) else [f"class_{i}" for i in range(num_classes)]


def _multiple_of_stride(value: int, where: str, source: str) -> None:
    if value % STRIDE:
        raise UserError(f"{source}: key '{where}': must be a multiple of {STRIDE} (ERFNet's stride), got {value}")


# ----- transforms (image and mask together) --------------------------------------------------


class ScaleCropFlip:
    """Scale by a factor drawn uniformly from [low, high], take a random ``crop`` x ``crop`` window of the scaled
    image (padded where smaller: image 0, mask 255, at a random place), flip it horizontally half the time: a
    tv_tensors Image and Mask together (torch's RNG). Only the window is resized, not the whole scaled image, and
    padding and flipping touch crop-sized tensors: a quarter of the pixels at scale 2. The image is resized by
    torchvision (uint8, channels-last: its fast path), the mask nearest-neighbour by indexing with the indices torch's
    nearest resize takes (flipped by the same indexing)."""

    def __init__(self, crop: int, low: float, high: float) -> None:
        self.crop, self.low, self.high = crop, low, high

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        params = self.params(*image.shape[-2:])
        return tv_tensors.Image(self.image(image, params)), tv_tensors.Mask(self.mask(mask, params))

    def params(self, height: int, width: int) -> dict[str, Any]:
        """The drawn window along each axis (``_window``) and the flip."""
        scale = float(torch.empty(()).uniform_(self.low, self.high))
        return {
            "rows": self._window(height, scale),
            "cols": self._window(width, scale),
            "flip": bool(torch.rand(()) < 0.5),
        }

    def _window(self, length: int, scale: float) -> tuple[int, int, int, int]:
        """Along one axis: (first source pixel, source pixels, their scaled length, padding before them)."""
        scaled = max(1, round(length * scale))
        if scaled <= self.crop:  # the whole axis fits: padded, at a random place in the crop
            return 0, length, scaled, int(torch.randint(0, self.crop - scaled + 1, ()))
        source = min(length, max(1, round(self.crop / scale)))
        return int(torch.randint(0, length - source + 1, ())), source, self.crop, 0

    def image(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """uint8 (3, H, W) -> (3, crop, crop), channels-last in memory."""
        (top, height, out_h, _), (left, width, out_w, _) = params["rows"], params["cols"]
        window = image.as_subclass(torch.Tensor)[:, top : top + height, left : left + width]
        # torch's fast uint8 resize wants channels-last memory; a window of an image is not contiguous in any order
        out = v2.functional.resize_image(window.permute(1, 2, 0).contiguous().permute(2, 0, 1), [out_h, out_w])
        return self._pad(out.flip(-1) if params["flip"] else out, params, 0)

    def mask(self, mask: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """(H, W) -> (crop, crop), nearest-neighbour: the source pixels torch's nearest resize takes."""
        (top, height, out_h, _), (left, width, out_w, _) = params["rows"], params["cols"]
        rows, cols = _nearest(height, out_h) + top, _nearest(width, out_w) + left
        cols = cols.flip(0) if params["flip"] else cols
        mask = mask.as_subclass(torch.Tensor)
        if mask.is_cpu:  # numpy's indexing: a third of torch's time for these (columns first: a row-major result)
            out = torch.from_numpy(mask.numpy()[:, cols.numpy()][rows.numpy()])
        else:
            out = mask[:, cols.to(mask.device)][rows.to(mask.device)]
        return self._pad(out, params, IGNORE)

    def _pad(self, out: torch.Tensor, params: dict[str, Any], fill: int) -> torch.Tensor:
        """``out`` at its place in a crop x crop canvas of ``fill`` (in ``out``'s memory order), or as it is."""
        (_, _, out_h, before_h), (_, _, out_w, before_w) = params["rows"], params["cols"]
        if (out_h, out_w) == (self.crop, self.crop):
            return out
        canvas = torch.full((self.crop, self.crop, *out.shape[:-2]), fill, dtype=out.dtype, device=out.device)
        canvas = canvas.permute(2, 0, 1) if out.ndim == 3 else canvas
        canvas[..., before_h : before_h + out_h, before_w : before_w + out_w] = out
        return canvas


def _nearest(source: int, out: int) -> torch.Tensor:
    """The source index of each of ``out`` pixels in a nearest-neighbour resize from ``source`` pixels, as torch
    computes it (float32: scale = source / out, index = floor(i * scale))."""
    scale = torch.tensor(source, dtype=torch.float32) / out
    return (torch.arange(out, dtype=torch.float32) * scale).long().clamp_(max=source - 1)


def normalise() -> v2.Transform:
    """uint8 image -> float, standardised with ImageNet's mean and std; masks pass through."""
    return v2.Compose(
        [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(MEAN, STD)]
    )


def train_transform(crop_size: int, scale_min: float, scale_max: float) -> v2.Transform:
    """One training sample as the model gets it: ``ScaleCropFlip``, then normalise (the loader leaves batches
    uint8, standardised on the device instead: ``on_device``)."""
    return v2.Compose([ScaleCropFlip(crop_size, scale_min, scale_max), normalise()])


def standardise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> float, standardised as ``normalise`` does one image (the same operations)."""
    mean = torch.tensor(MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(3, 1, 1)
    return images.to(torch.float32).mul_(1 / 255).sub_(mean).div_(std)


class Indexed(Dataset):
    """The samples of ``dataset`` with their index: (image, mask, index)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return (*self.dataset[index], index)


def whole_images(samples: list[tuple[torch.Tensor, torch.Tensor, int]]) -> dict[str, list]:
    """``augment_on: "device"``'s collate: the batch's uint8 images and masks as they are (their sizes differ)."""
    return {"images": [s[0] for s in samples], "masks": [s[1] for s in samples], "indices": [s[2] for s in samples]}


class DeviceAugment:
    """``augment_on: "device"``: ``ScaleCropFlip`` applied to a batch of whole images where they are (the GPU),
    each sample seeded as the loader seeds it (``EpochSeeded.seeded``): the same parameters as in the loader, so
    the same numbers on the CPU. The batch is then as the loader's ``uint8_batch`` gives it."""

    def __init__(self, seeded: EpochSeeded, transform: ScaleCropFlip) -> None:
        self.seeded, self.transform = seeded, transform

    def __call__(self, batch: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = []
        for image, mask, index in zip(batch["images"], batch["masks"], batch["indices"], strict=True):
            with self.seeded.seeded(index):
                image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            samples.append((image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)))
        return uint8_batch(samples)


def uint8_batch(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training's collate: augmented uint8 images and their masks, stacked as they are (standardised on the
    device: ``on_device``). ``ScaleCropFlip``'s images are channels-last in memory; stacked as such (a copy),
    where stacking them as (N, 3, H, W) memory would transpose every pixel: a third of decoding's cost. Stacked by
    torch's default_collate: in a loader worker, straight into the shared memory that takes the batch to the main
    process (a copy less: 8% of a worker's time for ERFNet's batches)."""
    images = default_collate([image.permute(1, 2, 0) for image, _ in samples]).permute(0, 3, 1, 2)
    return images, default_collate([mask for _, mask in samples])


def on_device(
    images: torch.Tensor, masks: torch.Tensor, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch where the model is: uint8 images -> standardised float (N, 3, H, W), masks -> int64.
    Done there rather than in the loader: a quarter (images) and an eighth (masks) of the bytes to copy. The images
    come channels-last in memory (``uint8_batch``): kept so with ``channels_last``, made contiguous otherwise."""
    return standardise(images if channels_last else images.contiguous()), masks.long()


def pad_to(images: torch.Tensor, masks: torch.Tensor | None, height: int, width: int):
    """Pad normalised (..., 3, H, W) images with black (as training's crops are padded) and masks with 255,
    on the bottom and right, to height x width."""
    h, w = images.shape[-2:]
    black = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)], dtype=images.dtype, device=images.device)
    padded = black.view(3, 1, 1).expand(*images.shape[:-2], height, width).clone()
    padded[..., :h, :w] = images
    images = padded
    masks = F.pad(masks, (0, width - w, 0, height - h), value=IGNORE) if masks is not None else None
    return images, masks


def padded_size(h: int, w: int) -> tuple[int, int]:
    """(h, w) rounded up to multiples of 8."""
    return -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE


def pad_collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of several sizes in one batch: padded to the largest, rounded up to a multiple of 8 (masks: 255)."""
    height, width = padded_size(max(s[0].shape[-2] for s in samples), max(s[0].shape[-1] for s in samples))
    padded = [pad_to(image, mask, height, width) for image, mask in samples]
    return default_collate([p[0] for p in padded]), default_collate([p[1] for p in padded])


# ----- data modes ------------------------------------------------------------------------------


def read_list(tree: Path, split: str) -> list[str]:
    """The image ids of ImageSets/Segmentation/<split>.txt."""
    path = tree / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise missing(path, f"VOC list of the '{split}' split", HOW)
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"{path}: the list is empty (expected one image id per line, e.g. 2007_000032)")
    return ids


def voc_pairs(tree: Path, split: str, masks: str = MASKS) -> list[tuple[Path, Path]]:
    """(JPEGImages/<id>.jpg, <masks>/<id>.png) for each id of the split's list."""
    return [(tree / "JPEGImages" / f"{i}.jpg", tree / masks / f"{i}.png") for i in read_list(tree, split)]


def download(root: Path) -> None:
    """Fetch and unpack VOC 2012 trainval with torchvision, unless the tree is already there."""
    if (root / TREE / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return
    from torchvision.datasets import VOCSegmentation

    try:
        VOCSegmentation(str(root), year="2012", image_set="trainval", download=True)
    except (RuntimeError, OSError) as e:
        raise UserError(f"{root / TREE}: could not download Pascal VOC 2012 ({e}). {HOW}") from None


class Shapes(Dataset):
    """Synthetic segmentation samples: rectangles and ellipses on a noisy background, class = colour.

    The colours are those of the VOC palette, so the image looks like its own mask plus noise.

    Each sample is drawn from its own seed (seed, split, index), so it is the same every time it
    is read, in any worker; the transform's randomness comes from torch's RNG as for real files.
    Sizes vary between 3/4 and 1 of ``size`` in each direction, as real photographs do.
    """

    def __init__(self, n: int, size: int, num_classes: int, seed: int, split: str, transform=None) -> None:
        self.n, self.size, self.num_classes = n, size, num_classes
        self.seed, self.split, self.transform = seed, split, transform
        self.colours = VOC_PALETTE[:num_classes].float()  # distinct colours, the same in every split

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image (3, H, W) and int64 mask (H, W), before any transform."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shapes", self.split, index))
        lo = 3 * self.size // 4
        h, w = (int(v) for v in torch.randint(lo, self.size + 1, (2,), generator=g))
        mask = torch.zeros(h, w, dtype=torch.int64)
        ys, xs = torch.arange(h).view(-1, 1), torch.arange(w).view(1, -1)
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            label = int(torch.randint(1, self.num_classes, (), generator=g))
            cy, cx = float(torch.rand((), generator=g)) * h, float(torch.rand((), generator=g)) * w
            ry = (0.15 + 0.25 * float(torch.rand((), generator=g))) * h
            rx = (0.15 + 0.25 * float(torch.rand((), generator=g))) * w
            if torch.rand((), generator=g) < 0.5:
                inside = ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
            else:
                inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            mask[inside] = label
        noise = torch.randn(3, h, w, generator=g) * 30
        image = (self.colours[mask].permute(2, 0, 1) + noise).clamp(0, 255).to(torch.uint8)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.sample(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class VocDataLoader:
    """train_loader and valid_loader over VOC 2012 (or synthetic shapes); test_loader is the val split.

    VOC's test masks are not public, so ``mode=test`` evaluates the val split (as the paper's
    VOC figures do).
    """

    config_schema = {
        "num_classes": Key(21, int, "classes, background included (VOC: 21)", min=2, max=255),
        "crop_size": Key(
            512, int, "training crops are crop_size x crop_size (a multiple of 8)", min=8, check=_multiple_of_stride
        ),
        "scale_min": Key(0.5, float, "training: scale images by a random factor in [scale_min, scale_max]", min=0.05),
        "scale_max": Key(2.0, float, "see scale_min", min=0.05, max=20.0),
        "train_split": Key("train", str, "folder/download: list ImageSets/Segmentation/<name>.txt to train on"),
        "train_masks": Key(
            MASKS, str, "folder of the training split's masks in VOC2012/ (SBD's trainaug: SegmentationClassAug)"
        ),
        "valid_split": Key("val", str, "folder/download: list to validate (and test) on"),
        "random_size": Key(64, int, "data_mode=random: synthetic training images", min=1, max=100_000),
        "random_image_size": Key(96, int, "data_mode=random: image height and width (up to)", min=8, max=4096),
        "skip_bad_files": SKIP_BAD_FILES,
        "augment_on": Key(
            "loader",
            str,
            "training's random scale, crop and flip: in the data loader (its workers), or on the device batch by "
            "batch (the loader then only decodes: a GPU the CPU cannot keep fed); the same numbers either way",
            choices=("loader", "device"),
        ),
    }

    def __init__(self, config) -> None:
        if config.scale_min > config.scale_max:
            raise UserError(
                f"config: key 'scale_min': {config.scale_min} is above scale_max {config.scale_max}; "
                "expected scale_min <= scale_max"
            )
        on_device = config.augment_on == "device"
        train_tf = ScaleCropFlip(config.crop_size, config.scale_min, config.scale_max)  # standardised on_device
        loader_tf = None if on_device else train_tf
        if config.data_mode == "random":
            n, size, c, seed = config.random_size, config.random_image_size, config.num_classes, config.seed
            train = Shapes(n, size, c, seed, "train", loader_tf)
            valid = Shapes(max(2, n // 4), size, c, seed, "valid", normalise())
        else:
            root = fetched_root(config, download)
            tree = root / TREE
            if not tree.is_dir():
                raise missing(tree, "Pascal VOC 2012 folder", HOW)
            kwargs = {"mode": "RGB", "skip_bad": config.skip_bad_files, "num_classes": config.num_classes}
            pairs = voc_pairs(tree, config.train_split, config.train_masks)
            train = ImageFiles(pairs, transform=loader_tf, long_masks=False, **kwargs)
            valid = ImageFiles(voc_pairs(tree, config.valid_split), transform=normalise(), **kwargs)
        common = {"seed": config.seed, "num_workers": config.num_workers}
        if on_device:  # whole uint8 images with their indices; the agent's to_device augments them
            self.train_loader = make_loader(Indexed(train), config.batch_size, True, collate_fn=whole_images, **common)
            self.augment_on_device = DeviceAugment(self.train_loader.dataset, train_tf)
        else:
            self.train_loader = make_loader(train, config.batch_size, True, collate_fn=uint8_batch, **common)
            self.augment_on_device = None
        # One image per batch: ERFNet's receptive field reaches into the padding, so padding an image to a
        # larger one of its batch would change its prediction (the metric must be that of the whole images).
        self.valid_loader = make_loader(valid, 1, train=False, collate_fn=pad_collate, **common)
        self.test_loader = self.valid_loader


# ----- class weights ------------------------------------------------------------------------


def weights_from_counts(counts: torch.Tensor) -> list[float]:
    """ENet's class weights from pixel counts: 1 / ln(1.02 + frequency); frequent classes weigh less."""
    freq = counts.double() / max(int(counts.sum()), 1)
    return (1.0 / torch.log(1.02 + freq)).tolist()


def count_pixels(masks, num_classes: int) -> torch.Tensor:
    """Pixels of each class over ``masks`` (int tensors), 255 left out."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for mask in masks:
        counts += torch.bincount(mask[mask != IGNORE].flatten(), minlength=num_classes)[:num_classes]
    return counts


def _read_mask(path: Path, num_classes: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            mask = torch.from_numpy(np.array(image, dtype=np.int64))
    except Exception as e:  # noqa: BLE001 (PIL raises many types for a bad file)
        raise UserError(f"{path}: not a readable mask ({type(e).__name__}: {e})") from None
    bad = (mask >= num_classes) & (mask != IGNORE)
    if mask.ndim != 2 or bad.any():
        what = f"{mask.ndim} dimensions" if mask.ndim != 2 else f"value {int(mask[bad][0])}"
        raise UserError(
            f"{path}: mask has {what}; expected palette indices 0..{num_classes - 1} or {IGNORE} "
            "(a palette (P) or grey (L) PNG of class indices, not colours)"
        )
    return mask


def cache_path(root: Path, split: str, masks: str = MASKS) -> Path:
    return root / f"voc_class_weights_{split}{'' if masks == MASKS else '_' + masks}.json"


def folder_class_weights(
    root: Path, num_classes: int, split: str = "train", force: bool = False, masks: str = MASKS
) -> list[float]:
    """ENet class weights over the ``masks`` of ``split``, cached in ``root`` (recomputed when the list or a mask
    changes: the cache keeps a digest of the list and of each mask's size and modification time)."""
    tree = root / TREE
    list_file = tree / "ImageSets" / "Segmentation" / f"{split}.txt"
    ids = read_list(tree, split)
    digest = hashlib.sha256(list_file.read_bytes())
    for i in ids:
        with contextlib.suppress(OSError):  # a missing mask is named when the masks are read
            stat = (tree / masks / f"{i}.png").stat()
            digest.update(f"{i} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    digest = digest.hexdigest()
    cache = cache_path(root, split, masks)
    if cache.is_file() and not force:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("masks_sha256") == digest and len(cached["weights"]) == num_classes:  # older: stale
                return [float(w) for w in cached["weights"]]
        except (ValueError, KeyError, TypeError):
            log.warning(f"{cache}: unreadable class-weight cache; computing the weights again")
    log.warning(f"computing class weights over {len(ids)} masks of {list_file} (once; cached in {cache})")
    counts = count_pixels((_read_mask(tree / masks / f"{i}.png", num_classes) for i in ids), num_classes)
    weights = weights_from_counts(counts)
    record = {
        "recipe": "ENet: 1 / ln(1.02 + pixel frequency of the class), 255 not counted",
        "split": split,
        "masks": masks,
        "masks_sha256": digest,
        "num_masks": len(ids),
        "classes": class_names(num_classes),
        "pixel_counts": counts.tolist(),
        "weights": weights,
    }
    write_text_atomic(cache, json.dumps(record, indent=2) + "\n")
    return weights


def class_weights(config) -> list[float]:
    """The ``class_weights: "auto"`` weights of the configured data (random mode: of its training shapes)."""
    if config.data_mode == "random":
        shapes = Shapes(config.random_size, config.random_image_size, config.num_classes, config.seed, "train")
        masks = (shapes.sample(i)[1] for i in range(len(shapes)))
        return weights_from_counts(count_pixels(masks, config.num_classes))
    # data_root, not fetched_root: the data loader has fetched the data already, and this runs on rank 0 alone.
    return folder_class_weights(data_root(config), config.num_classes, config.train_split, masks=config.train_masks)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m datasets.voc", description="Pascal VOC 2012 helpers.")
    sub = parser.add_subparsers(dest="command", required=True)
    cw = sub.add_parser("class-weights", help="compute (or show the cached) ENet class weights of a split's masks")
    cw.add_argument("--data-root", default="data", help="folder holding VOCdevkit/VOC2012 (default: data)")
    cw.add_argument("--split", default="train", help="ImageSets/Segmentation/<split>.txt (default: train)")
    cw.add_argument("--masks", default=MASKS, help=f"the masks' folder in VOC2012/ (default: {MASKS})")
    cw.add_argument("--num-classes", type=int, default=len(CLASSES))
    cw.add_argument("--force", action="store_true", help="recompute even when cached")
    args = parser.parse_args(argv)
    root = repo_path(args.data_root)
    try:
        weights = folder_class_weights(root, args.num_classes, args.split, force=args.force, masks=args.masks)
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    for name, w in zip(class_names(args.num_classes), weights, strict=True):
        sys.stdout.write(f"{name:<12} {w:8.4f}\n")
    sys.stdout.write(f"cached in {cache_path(root, args.split, args.masks)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
