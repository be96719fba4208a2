"""DCGAN generator (Radford, Metz, Chintala, ICLR 2016): noise vector -> image, as in pytorch/examples.

At ``image_size`` 64 (``ngf`` = 64, ``nz`` = 100, 3 channels: 3,576,704 parameters):

| layer | output (C x H x W) |
|---|---|
| input z | nz x 1 x 1 |
| conv-transpose 4x4, stride 1, pad 0; batch norm; ReLU | 8 ngf x 4 x 4 |
| conv-transpose 4x4, stride 2, pad 1; batch norm; ReLU | 4 ngf x 8 x 8 |
| conv-transpose 4x4, stride 2, pad 1; batch norm; ReLU | 2 ngf x 16 x 16 |
| conv-transpose 4x4, stride 2, pad 1; batch norm; ReLU | ngf x 32 x 32 |
| conv-transpose 4x4, stride 2, pad 1; Tanh | channels x 64 x 64 |

At ``image_size`` 32 the first block starts at 4 ngf (one block fewer). Convolutions have no
bias (batch norm follows). Outputs lie in [-1, 1].
"""

import torch
from torch import nn

from graphs.models.custom_layers.dcgan_init import dcgan_init_

BLOCKS = {64: 4, 32: 3}  # up-sampling blocks after the first 4x4 one, per output size


def _up(c_in: int, c_out: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


class DCGANGenerator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        if image_size not in BLOCKS:
            raise ValueError(f"image_size must be one of {sorted(BLOCKS)}, got {image_size}")
        self.nz = nz
        widths = [ngf * 2**i for i in reversed(range(BLOCKS[image_size]))]  # 64: 8 ngf, 4 ngf, 2 ngf, ngf
        layers = _up(nz, widths[0], stride=1, padding=0)
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += _up(c_in, c_out, stride=2, padding=1)
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init_)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, channels, image_size, image_size) in [-1, 1] from noise (N, nz) or (N, nz, 1, 1)."""
        return self.main(z.view(z.shape[0], self.nz, 1, 1))  # shape[0], not len(): a dynamic batch under torch.export
