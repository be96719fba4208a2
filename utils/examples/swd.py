"""Sliced Wasserstein distance between two sets of images (Karras et al., ICLR 2018, appendix D).

It compares the distributions of local image patches at several scales and needs no trained
network (no download): for each image a Laplacian pyramid (binomial 5x5 filter) down to 16x16;
from every level, 128 random 7x7 patches per image; each colour channel standardised per level
and per set; then, per level, 4 repeats of 128 random unit directions: both sets' patches are
projected, the projections sorted, and the mean absolute difference of the sorted values is the
1-D Wasserstein distance along that direction. Reported x 1e3, per level and averaged; lower is
better, 0 for identical sets.

As in the reference code (tkarras/progressive_growing_of_gans, metrics/sliced_wasserstein.py),
images enter as uint8 (0..255), both sets equally many. One difference, for reproducibility and
exact symmetry: both sets use the same patch positions and directions (common random numbers),
drawn from the ``generator`` given, so ``swd(a, b) == swd(b, a)`` and ``swd(a, a) == 0``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
KERNEL = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0  # the 5x5 binomial filter of cv2.pyrDown


def _filter(images: torch.Tensor, scale: float, stride: int) -> torch.Tensor:
    """Each channel convolved with ``scale`` x KERNEL, mirror-padded (scipy's "mirror", torch's "reflect")."""
    channels = images.shape[1]
    weight = (KERNEL * scale).to(images).expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), weight, stride=stride, groups=channels)


def pyr_down(images: torch.Tensor) -> torch.Tensor:
    """Blur and keep every second row and column (cv2.pyrDown): (N, C, H, W) -> (N, C, H/2, W/2)."""
    return _filter(images, 1.0, stride=2)


def pyr_up(images: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels and blur with 4 x the filter (cv2.pyrUp): (N, C, H, W) -> (N, C, 2H, 2W)."""
    n, c, h, w = images.shape
    spread = images.new_zeros(n, c, 2 * h, 2 * w)
    spread[:, :, ::2, ::2] = images
    return _filter(spread, 4.0, stride=1)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last is the low-pass image (summing the levels up rebuilds the input)."""
    pyramid = [images.float()]
    for _ in range(1, levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def resolutions(image_size: int, min_resolution: int = 16) -> list[int]:
    """The pyramid's level sizes: image_size, image_size/2, ... down to min_resolution (64 -> [64, 32, 16])."""
    sizes = []
    while image_size >= min_resolution:
        sizes.append(image_size)
        image_size //= 2
    return sizes


def patch_positions(n: int, size: int, per_image: int, patch: int, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (n * per_image, 2) of patches lying wholly inside a size x size level."""
    return torch.randint(0, size - patch + 1, (n * per_image, 2), generator=generator)


def descriptors(level: torch.Tensor, corners: torch.Tensor, patch: int) -> torch.Tensor:
    """Patches (n * per_image, C * patch * patch) of one level, each channel standardised over the set."""
    n, c = level.shape[:2]
    per_image = len(corners) // n
    image = torch.arange(n, device=level.device).repeat_interleave(per_image)
    offsets = torch.arange(patch, device=level.device)
    corners = corners.to(level.device)
    rows = (corners[:, 0, None] + offsets)[:, :, None]  # (M, patch, 1)
    cols = (corners[:, 1, None] + offsets)[:, None, :]  # (M, 1, patch)
    desc = level.permute(0, 2, 3, 1)[image[:, None, None], rows, cols]  # (M, patch, patch, C)
    mean = desc.mean(dim=(0, 1, 2))
    std = desc.std(dim=(0, 1, 2), unbiased=False)
    # A channel constant over the whole set (a collapsed generator) is only centred: no 0/0.
    desc = (desc - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return desc.permute(0, 3, 1, 2).reshape(len(desc), c * patch * patch)


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row sorted. On the CPU through numpy: torch's CPU sort, which also builds indices, is ~15x slower."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: list[torch.Tensor]) -> float:
    """Mean over ``directions`` (each (D, K), unit columns) of the mean |sorted(a @ d) - sorted(b @ d)|."""
    results = []
    for dirs in directions:
        dirs = dirs.to(a)
        proj_a, proj_b = _sort_rows(dirs.T @ a.T), _sort_rows(dirs.T @ b.T)  # (K, M): one row per direction
        results.append((proj_a - proj_b).abs().mean())
    return float(torch.stack(results).mean())


def unit_directions(dim: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random unit vectors of length ``dim``, as columns (dim, count)."""
    dirs = torch.randn(dim, count, generator=generator)
    return dirs / dirs.norm(dim=0, keepdim=True)


def swd(
    a: torch.Tensor,
    b: torch.Tensor,
    generator: torch.Generator,
    min_resolution: int = 16,
    patches_per_image: int = 128,
    patch_size: int = 7,
    repeats: int = 4,
    directions_per_repeat: int = 128,
) -> dict[int, float]:
    """SWD x 1e3 per pyramid level, keyed by the level's size, between uint8 image sets ``a`` and ``b`` (N, C, S, S).

    The defaults are Karras et al.'s; the random draws come from ``generator`` (a CPU torch.Generator), so
    a given seed gives the same value on any device. The average over levels is ``mean(result.values())``.
    """
    if a.shape != b.shape or a.ndim != 4 or a.shape[2] != a.shape[3]:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"expected two image sets of one shape (N, C, S, S), got {shapes}")
    sizes = resolutions(a.shape[2], min_resolution)
    if not sizes:
        raise ValueError(f"images of {a.shape[2]}x{a.shape[2]} are smaller than min_resolution {min_resolution}")
    result = {}
    pyramids = laplacian_pyramid(a, len(sizes)), laplacian_pyramid(b, len(sizes))
    for size, level_a, level_b in zip(sizes, *pyramids, strict=True):
        corners = patch_positions(len(a), size, patches_per_image, patch_size, generator)
        desc_a, desc_b = descriptors(level_a, corners, patch_size), descriptors(level_b, corners, patch_size)
        dim = desc_a.shape[1]
        dirs = [unit_directions(dim, directions_per_repeat, generator) for _ in range(repeats)]
        result[size] = sliced_wasserstein(desc_a, desc_b, dirs) * 1e3
    return result
