"""Image files on disk as a Dataset, with every file checked and every failure naming the file.

For the ``folder`` mode of datasets whose samples are image files: class folders (the
torchvision ImageFolder layout), image/mask pairs (segmentation), or a plain folder of images
(``image_files``: unlabelled, for generative models; give each image class 0). A bad sample -- a file that
is not an image, a damaged image, a mask whose size differs from its image, mask values out of
range -- stops the run with an error naming the file; with ``skip_bad_files: true`` it is left
out instead, and every file left out is logged with a count.

Files are checked twice: once when the dataset is built (each header is opened, PNGs are
verified whole, mask sizes are compared), and again when a sample is decoded, which catches
what a header cannot show (a JPEG cut short). A sample skipped at decode time is replaced by
the next readable one, so batches keep their size and a resumed run sees the same samples.

Images are decoded by torchvision.io where it gives PIL's pixels (8-bit JPEG and PNG in RGB, RGBA or grey:
1.2-1.6x faster than PIL here), by PIL otherwise; a file torchvision.io fails on is
decoded again by PIL, which names what is wrong with it. 8-bit PNG masks too; they stay uint8 through the
transforms (``long_masks=False``: after them too, for a conversion on the GPU). 16-bit grey images are read at
their high byte, as PIL reads 16-bit colour (16-bit masks keep their values).

With ``min_size`` (a transform that shrinks images to that size), a JPEG is decoded by simplejpeg at the
smallest of libjpeg-turbo's reduced scales 1/2, 1/4, 1/8 (its fast ones, PIL's draft's) that keeps both sides
at least ``min_size``: each 8x8 block's lowest frequencies give a smaller block. Fewer pixels decoded, the
transform's input no smaller than it needs: CelebA's 178x218 faces for 64x64 are decoded at 89x109, in 0.7x
the time. A JPEG libjpeg warns about (extraneous bytes) is decoded whole instead, by torchvision.io.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import pil_to_tensor

from datasets.common import missing
from utils.config import Key
from utils.errors import UserError
from utils.run.recorder import DATA_LOG as log

SKIP_BAD_FILES = Key(
    False,
    bool,
    "folder data: leave out each unreadable image (segmentation: or bad mask), logged, instead of stopping",
)
JUNK = {"Thumbs.db", "desktop.ini"}  # written by file browsers; hidden (dot) files are ignored too

Target = int | Path  # a class index, or the path of a segmentation mask
# (format, PIL mode) of files that torchvision.io decodes to the pixels PIL's convert("RGB") gives, 3x8-bit
# RGB (tests/test_image_files.py compares the two); grey images as PIL converts RGB to "L" (ITU-R 601-2).
NATIVE = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L")}
NATIVE_MASKS = {("PNG", "P"), ("PNG", "L")}  # torchvision.io gives their palette indices or values, as PIL does
# Unsigned 16-bit grey, as PIL modes or as the raw modes of PIL's mode "I" (a 16-bit PGM): read at their high byte.
SIXTEEN_BITS = {"I;16", "I;16B", "I;16L", "I;16N"}


def _is_junk(path: Path, under: Path) -> bool:
    """Hidden (a dot-named file or folder on the way, such as .ipynb_checkpoints/) or file-browser junk."""
    return path.name in JUNK or any(part.startswith(".") for part in path.relative_to(under).parts)


def class_folders(root: Path, how: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<class>/<image>`` (torchvision's ImageFolder layout) as (path, class index) pairs and class names.

    Every file under a class folder is a sample (so a stray file is reported, not ignored),
    except hidden files and file-browser junk. Classes are the folder names, sorted.
    """
    if not root.is_dir():
        raise missing(root, "image folder", how)
    entries = sorted(p for p in root.iterdir() if not _is_junk(p, root))
    strays = [p for p in entries if not p.is_dir()]
    if strays:
        raise UserError(f"{strays[0]}: a file outside the class folders (expected {root}/<class>/<image>). {how}")
    if not entries:
        raise UserError(f"{root}: no class folders in it (expected {root}/<class>/<image>). {how}")
    samples = []
    for index, folder in enumerate(entries):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not _is_junk(p, root))
        if not files:
            raise UserError(f"{folder}: class folder without images. {how}")
        samples += [(p, index) for p in files]
    return samples, [p.name for p in entries]


def image_files(root: Path, how: str) -> list[Path]:
    """Every file under ``root``, flat or in sub-folders at any depth, sorted: the samples of an unlabelled set.

    As in ``class_folders``, every file is a sample (a stray one is reported when checked, not ignored),
    except hidden files and file-browser junk.
    """
    if not root.is_dir():
        raise missing(root, "image folder", how)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _is_junk(p, root))
    if not files:
        raise UserError(f"{root}: no image files in it (flat or in sub-folders). {how}")
    return files


def predict_files(given: str | None) -> list[Path]:
    """The image files mode=predict reads: the file ``given``, or the images in the folder ``given`` (sorted)."""
    if not given:
        raise UserError("config: key 'predict_input': mode=predict needs an image file or a folder of images")
    source = Path(given)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"config: key 'predict_input': {source} is neither a file nor a folder")
    suffixes = set(Image.registered_extensions())
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes and not _is_junk(p, source))
    files = [p for p in files if p.is_file()]
    if not files:
        raise UserError(f"config: key 'predict_input': {source} holds no image files")
    return files


class _BadSample(Exception):
    """(path, why): a file that cannot serve as a sample."""


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever PIL raises while reading ``path`` into a _BadSample naming it."""
    try:
        yield
    except UnidentifiedImageError:
        raise _BadSample(path, "not an image (no image format PIL knows)") from None
    except Exception as e:  # PIL raises many types for a malformed file (OSError, SyntaxError, struct.error...)
        raise _BadSample(path, f"not a readable image ({type(e).__name__}: {e})") from None


def _verified_header(path: Path) -> tuple[tuple[int, int], str | None, str]:
    """((width, height), format, mode) of an image whose header opens and, for PNG, whose every chunk checks out;
    the mode of a PNG of other than 8 bits a sample is marked (as "P;4", "RGB;16B"): PIL's raw mode."""
    with _reading(path), Image.open(path) as image:
        raw = image.tile[0].args if image.format == "PNG" and len(image.tile) == 1 else image.mode
        header = image.size, image.format, raw if isinstance(raw, str) else image.mode
        image.verify()
    return header


def _reduction(size: tuple[int, int], min_size: int) -> int:
    """The largest of 8, 4 and 2 that libjpeg can divide an image of ``size`` by, both sides still at least
    ``min_size`` (1: none); its sides are then rounded up."""
    return next((f for f in (8, 4, 2) if min(-(-side // f) for side in size) >= min_size), 1)


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> grey (1, H, W) as PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2**15) >> 16."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(3, 1, 1)
    return ((rgb.to(torch.int32) * weights).sum(0, keepdim=True) + 2**15).bitwise_right_shift_(16).to(torch.uint8)


class ImageFiles(Dataset):
    """(image, target) pairs read from files: uint8 images (C, H, W) and a class index or an int64 mask (H, W).

    ``mode`` is the PIL mode every image is converted to ("RGB", "L"). ``transform`` receives the
    image (and the mask, for pairs) as torchvision tv_tensors, so torchvision.transforms.v2
    applies the same crop or flip to both. ``num_classes`` (masks only) bounds mask values;
    ``ignore_index`` is the one value allowed beyond it (VOC's 255 border). ``min_size``: the smallest height and
    width the transform needs (it shrinks images to about that): JPEGs are decoded no larger than they need be.
    ``skip_bad``: leave out unreadable files (logged); None: not for a config without ``skip_bad_files``, whose
    errors then do not advise that key.
    """

    def __init__(
        self,
        samples: list[tuple[Path, Target]],
        mode: str = "RGB",
        transform: Callable | None = None,
        skip_bad: bool | None = False,
        num_classes: int | None = None,
        ignore_index: int = 255,
        long_masks: bool = True,
        min_size: int | None = None,
    ) -> None:
        self.mode, self.transform, self.skip_bad = mode, transform, skip_bad
        self.num_classes, self.ignore_index, self.long_masks = num_classes, ignore_index, long_masks
        self.samples: list[tuple[Path, Target]] = []
        self._native: dict[Path, str] = {}  # the images torchvision.io decodes: their PIL mode
        self._native_masks: set[Path] = set()
        self._scaled: dict[Path, tuple[int, int]] = {}  # the JPEGs decoded at a reduced scale: (height, width)
        skipped = []
        for image, target in samples:
            try:
                size, header, mask_header = self._check(image, target)
                self.samples.append((image, target))
                if header in NATIVE and mode in ("RGB", "L"):
                    self._native[image] = header[1]
                    reduction = _reduction(size, min_size) if header[0] == "JPEG" and min_size else 1
                    if reduction > 1:
                        self._scaled[image] = (-(-size[1] // reduction), -(-size[0] // reduction))
                if mask_header in NATIVE_MASKS:
                    self._native_masks.add(target)
            except _BadSample as e:
                if not skip_bad:
                    raise self._error(e) from None
                skipped.append(e.args)
        for path, why in skipped:
            log.warning(f"skipped {path}: {why}")
        if skipped:
            log.warning(f"skipped {len(skipped)} of {len(samples)} samples (skip_bad_files=true); the list is above")
        if not self.samples:
            where = samples[0][0].parent if samples else "the dataset"
            raise UserError(f"{where}: no readable samples ({len(skipped)} skipped)")

    @staticmethod
    def _check(image: Path, target: Target) -> tuple[tuple[int, int], tuple, tuple | None]:
        """The image's (width, height), the (format, mode) of the image and of its mask (None without one); raise
        _BadSample for a sample that cannot be used (checked by headers)."""
        size, *header = _verified_header(image)
        mask_header = None
        if isinstance(target, Path):
            if not target.exists():
                raise _BadSample(image, f"its mask {target} does not exist")
            mask_size, *mask_header = _verified_header(target)
            if mask_size != size:
                raise _BadSample(
                    target,
                    f"mask is {mask_size[0]}x{mask_size[1]} (width x height), its image {image} is {size[0]}x{size[1]}",
                )
        return size, tuple(header), mask_header and tuple(mask_header)

    def _error(self, bad: _BadSample) -> UserError:
        path, why = bad.args
        advice = "" if self.skip_bad is None else ", or set skip_bad_files=true to leave such files out"
        return UserError(f"{path}: {why}; fix or remove it{advice}")

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: list[int]) -> ImageFiles:
        """These samples only (a split): a sample skipped at decode time is then replaced from the same split."""
        part = copy.copy(self)
        part.samples = [self.samples[i] for i in indices]
        return part

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        for offset in range(len(self.samples)):
            sample = self._sample((index + offset) % len(self.samples), " (replaced by the next sample)")
            if sample is not None:
                return sample
        raise UserError(f"{self.samples[0][0].parent}: no sample could be read")

    def readable(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | int]]:
        """Each sample once, in order (mode=predict): one found unreadable when decoded stops it, naming the file,
        or with ``skip_bad`` is logged and left out (not replaced by the next one, as training's samples are)."""
        for i in range(len(self.samples)):
            sample = self._sample(i)
            if sample is not None:
                yield sample

    def _sample(self, i: int, instead: str = "") -> tuple[torch.Tensor, torch.Tensor | int] | None:
        """Sample ``i``; unreadable: an error naming the file, or with ``skip_bad`` None (logged)."""
        try:
            return self._read(i)
        except _BadSample as e:
            if not self.skip_bad:
                raise self._error(e) from None
            log.warning(f"skipped {e.args[0]}: {e.args[1]}{instead}")
            return None

    def _read(self, i: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        image_path, target = self.samples[i]
        image = self._image(image_path)
        if not isinstance(target, Path):  # a plain tensor is an image to torchvision's v2 transforms
            return (self.transform(image) if self.transform else image), target
        image = tv_tensors.Image(image)
        mask = self._mask(target)
        if mask.ndim != 2:
            raise _BadSample(
                target, f"mask has {mask.ndim} dimensions, expected a palette (P) or grey (L) PNG of class indices"
            )
        fits = self.num_classes is None or self._labels_fit(mask)
        bad = None if fits else (mask >= self.num_classes).logical_and_(mask != self.ignore_index)
        if bad is not None and bad.any():
            raise _BadSample(
                target,
                f"mask value {int(mask[bad][0])} out of range 0..{self.num_classes - 1} "
                f"(or {self.ignore_index} for ignored pixels)",
            )
        mask = tv_tensors.Mask(mask)
        if self.transform:
            image, mask = self.transform(image, mask)
        mask = mask.as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), mask.long() if self.long_masks else mask

    def _labels_fit(self, mask: torch.Tensor) -> bool:
        """True when every value is a class or ignore_index by a quick test (uint8 masks ignoring 255: one pass,
        where the exact test takes four and a quarter of decoding's time); False: run the exact test."""
        if mask.dtype == torch.uint8 and self.ignore_index == 255:
            return int((mask + 1).max()) <= self.num_classes  # 255 + 1 wraps to 0
        return False

    def _mask(self, path: Path) -> torch.Tensor:
        """The mask at ``path``: uint8 (H, W) palette indices or values (int64 for wider ones), before any check."""
        if path in self._native_masks:
            try:
                mask = decode_image(read_file(str(path)))
            except RuntimeError:
                mask = None  # damaged: PIL reads it again and names what is wrong
            if mask is not None and mask.shape[0] == 1 and mask.dtype == torch.uint8:
                return mask[0]
        mask = torch.from_numpy(np.array(self._decode(path, None)))
        return mask if mask.dtype == torch.uint8 else mask.long()

    def _image(self, path: Path) -> torch.Tensor:
        """The image at ``path`` as uint8 (C, H, W) in ``self.mode``: simplejpeg at a reduced scale (``min_size``), or
        torchvision.io where it decodes as PIL does, else PIL."""
        source = self._native.get(path)
        if source is not None:
            grey = self.mode == "L" and source == "L"
            image = self._reduced(path, grey) if path in self._scaled else None
            if image is None:
                try:
                    image = decode_image(read_file(str(path)), mode=ImageReadMode.GRAY if grey else ImageReadMode.RGB)
                except RuntimeError:
                    image = None  # damaged (a JPEG cut short): PIL decodes it again and names what is wrong
            if image is not None and image.dtype == torch.uint8:  # uint16: a 16-bit PNG since the check; PIL reads it
                return _grey(image) if self.mode == "L" and not grey else image
        return pil_to_tensor(self._decode(path, self.mode))

    def _reduced(self, path: Path, grey: bool) -> torch.Tensor | None:
        """A JPEG decoded at its reduced scale (channels-last memory: the resize's fast path); None when libjpeg
        warns (extraneous bytes) or fails: torchvision.io, then PIL, decide."""
        height, width = self._scaled[path]
        try:
            pixels = simplejpeg.decode_jpeg(
                path.read_bytes(), "GRAY" if grey else "RGB", min_height=height, min_width=width
            )
        except ValueError:
            return None
        return torch.from_numpy(pixels).permute(2, 0, 1)

    @staticmethod
    def _decode(path: Path, mode: str | None) -> Image.Image:
        """The whole image decoded by PIL (in ``mode`` unless None): damage past the header shows up here.

        Grey pixels wider than 8 bits (PIL modes "I;16", "I", "F"), which PIL's convert clips at 255 (all but the
        darkest 1/256 of a 16-bit range turns white), are taken at their high byte when 16-bit; 32-bit ones have no
        range to scale from: an error naming the file. Masks (``mode`` None) keep their values."""
        with _reading(path), Image.open(path) as image:
            if mode is None or not image.mode.startswith(("I", "F")):
                return image.convert(mode) if mode else image.copy()
            raw = image.tile[0].args if len(image.tile) == 1 else None
            sixteen = image.mode in SIXTEEN_BITS or (raw[0] if isinstance(raw, tuple) else raw) in SIXTEEN_BITS
            # PIL scales a PGM of any maxval (1023, 4095) to 16 bits; a PFM ("PPM" too) is float: 32 bits
            sixteen = sixteen or (image.format == "PPM" and image.mode == "I")
            pixels = np.asarray(image)
        if not sixteen:
            raise _BadSample(path, f"pixels of 32 bits (PIL mode {image.mode}): expected 8 or 16 bits a sample")
        return Image.fromarray((pixels >> 8).astype(np.uint8)).convert(mode)
