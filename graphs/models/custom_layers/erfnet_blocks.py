"""ERFNet's three blocks (Romera et al., IEEE T-ITS 2018, Fig. 2 and Sec. III).

- ``DownsamplerBlock``: a 3x3 stride-2 convolution concatenated with a 2x2 max-pool (ENet's
  initial block), halving the resolution; batch norm and ReLU after the concatenation.
- ``NonBottleneck1D``: the residual "non-bottleneck-1D" block: each 3x3 convolution of a ResNet
  basic block factorised into a 3x1 and a 1x3 convolution (ReLU in between); the second pair
  dilated; spatial dropout before the residual sum.
- ``UpsamplerBlock``: a 3x3 stride-2 transposed convolution doubling the resolution, then batch
  norm and ReLU.

Batch norm uses eps 1e-3, as the authors' code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3


class DownsamplerBlock(nn.Module):
    """(N, in, H, W) -> (N, out, H/2, W/2): [conv 3x3 stride 2 -> out - in channels | max-pool 2x2], BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError(f"a downsampler widens: out_channels {out_channels} must exceed in_channels {in_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Residual, (N, C, H, W) kept: 3x1, ReLU, 1x3, BN, ReLU, 3x1 and 1x3 dilated, BN, dropout; + input, ReLU."""

    def __init__(self, channels: int, dropout: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d))
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        # Dropout2d drops whole feature maps (spatial dropout, as in the paper); p=0 is a no-op.
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return F.relu(out + x)


class UpsamplerBlock(nn.Module):
    """(N, in, H, W) -> (N, out, 2H, 2W): transposed conv 3x3 stride 2, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))
