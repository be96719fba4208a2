"""ERFNet: Efficient Residual Factorized ConvNet (Romera, Alvarez, Bergasa, Arroyo, IEEE T-ITS 2018).

Table 1 of the paper, for an input of H x W (the paper's is 1024 x 512); blocks in
``graphs/models/custom_layers/erfnet_blocks.py``:

| layer | type | out channels | out size |
|---|---|---|---|
| | **encoder** | | |
| 1 | downsampler block | 16 | H/2 x W/2 |
| 2 | downsampler block | 64 | H/4 x W/4 |
| 3-7 | 5 x non-bt-1D (dropout 0.03) | 64 | H/4 x W/4 |
| 8 | downsampler block | 128 | H/8 x W/8 |
| 9 | non-bt-1D (dilated 2) | 128 | H/8 x W/8 |
| 10 | non-bt-1D (dilated 4) | 128 | H/8 x W/8 |
| 11 | non-bt-1D (dilated 8) | 128 | H/8 x W/8 |
| 12 | non-bt-1D (dilated 16) | 128 | H/8 x W/8 |
| 13-16 | layers 9-12 again (dilated 2, 4, 8, 16; dropout 0.3 in 9-16) | 128 | H/8 x W/8 |
| | **decoder** | | |
| 17 | deconvolution (upsampling) | 64 | H/4 x W/4 |
| 18-19 | 2 x non-bt-1D | 64 | H/4 x W/4 |
| 20 | deconvolution (upsampling) | 16 | H/2 x W/2 |
| 21-22 | 2 x non-bt-1D | 16 | H/2 x W/2 |
| 23 | deconvolution (2 x 2, stride 2) | C | H x W |

The encoder also holds the paper's 1x1 classifier over its 128 channels (``encoder.output_conv``),
used only when the encoder is trained alone (``forward(x, encoder_only=True)``: C x H/8 x W/8), as
in the paper's first training stage. With it, 21 classes give 2,067,030 parameters (2,064,321
without). Parameter names follow the authors' code (Eromera/erfnet_pytorch), so their state
dicts load by name. H and W must be multiples of 8 (three halvings, then three doublings back).
"""

from __future__ import annotations

import torch
from torch import nn

from graphs.models.custom_layers.erfnet_blocks import DownsamplerBlock, NonBottleneck1D, UpsamplerBlock

DILATIONS = (2, 4, 8, 16)


class ERFNetEncoder(nn.Module):
    """Layers 1-16: (N, 3, H, W) -> (N, 128, H/8, W/8); ``output_conv`` maps them to class scores."""

    def __init__(self, num_classes: int, dropout_64: float = 0.03, dropout_128: float = 0.3) -> None:
        super().__init__()
        self.initial_block = DownsamplerBlock(3, 16)
        layers: list[nn.Module] = [DownsamplerBlock(16, 64)]
        layers += [NonBottleneck1D(64, dropout_64, dilation=1) for _ in range(5)]
        layers.append(DownsamplerBlock(64, 128))
        layers += [NonBottleneck1D(128, dropout_128, dilation=d) for _ in range(2) for d in DILATIONS]
        self.layers = nn.Sequential(*layers)
        self.output_conv = nn.Conv2d(128, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.initial_block(x))


class ERFNetDecoder(nn.Module):
    """Layers 17-23: (N, 128, H/8, W/8) -> class scores (N, num_classes, H, W)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            UpsamplerBlock(128, 64),
            NonBottleneck1D(64),
            NonBottleneck1D(64),
            UpsamplerBlock(64, 16),
            NonBottleneck1D(16),
            NonBottleneck1D(16),
        )
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_conv(self.layers(x))


class ERFNet(nn.Module):
    """Class scores (N, num_classes, H, W) for normalised RGB images (N, 3, H, W), H and W multiples of 8."""

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        self.encoder = ERFNetEncoder(num_classes)
        self.decoder = ERFNetDecoder(num_classes)

    def forward(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"ERFNet needs height and width divisible by 8, got {h}x{w}: pad the input first")
        features = self.encoder(x)
        if encoder_only:
            return self.encoder.output_conv(features)
        return self.decoder(features)
