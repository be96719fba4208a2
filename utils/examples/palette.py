"""Label maps as pictures: the Pascal VOC colour map, colourised masks and overlays."""

from __future__ import annotations

import torch


def voc_palette() -> torch.Tensor:
    """The 256 colours (uint8, 256 x 3) of Pascal VOC's masks: label i's bits spread over R, G, B.

    Bit 0 of the label goes to bit 7 of red, bit 1 to bit 7 of green, bit 2 to bit 7 of blue,
    bit 3 to bit 6 of red, and so on (VOCdevkit's ``labelcolormap``). Label 255, the ignored
    border, is (224, 224, 192).
    """
    colours = torch.zeros(256, 3, dtype=torch.uint8)
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[label] = torch.tensor([r, g, b], dtype=torch.uint8)
    return colours


VOC_PALETTE = voc_palette()


def colourise(mask: torch.Tensor, palette: torch.Tensor = VOC_PALETTE) -> torch.Tensor:
    """Labels (H, W), values 0..255, -> a uint8 RGB image (3, H, W)."""
    return palette.to(mask.device)[mask.long()].permute(2, 0, 1).contiguous()


def overlay(
    image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5, palette: torch.Tensor = VOC_PALETTE
) -> torch.Tensor:
    """uint8 RGB image (3, H, W) with the colours of ``mask``'s labels blended in; label 0 (background) left clear."""
    colour = colourise(mask, palette).float()
    blended = image.float() * (1 - alpha) + colour * alpha
    return torch.where(mask.bool(), blended, image.float()).round().to(torch.uint8)
