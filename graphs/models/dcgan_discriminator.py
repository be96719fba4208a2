"""DCGAN discriminator (Radford, Metz, Chintala, ICLR 2016): image -> one logit (real vs generated).

At ``image_size`` 64 (``ndf`` = 64, 3 channels: 2,765,568 parameters):

| layer | output (C x H x W) |
|---|---|
| input image | channels x 64 x 64 |
| conv 4x4, stride 2, pad 1; LeakyReLU(0.2) (no batch norm) | ndf x 32 x 32 |
| conv 4x4, stride 2, pad 1; batch norm; LeakyReLU(0.2) | 2 ndf x 16 x 16 |
| conv 4x4, stride 2, pad 1; batch norm; LeakyReLU(0.2) | 4 ndf x 8 x 8 |
| conv 4x4, stride 2, pad 1; batch norm; LeakyReLU(0.2) | 8 ndf x 4 x 4 |
| conv 4x4, stride 1, pad 0 | 1 x 1 x 1 (a logit) |

At ``image_size`` 32 the last down-sampling block (to 8 ndf) is left out. The output is a logit,
not a probability: the loss is BCE-with-logits, which is stable where a Sigmoid + BCE saturates.
"""

import torch
from torch import nn

from graphs.models.custom_layers.dcgan_init import dcgan_init_

BLOCKS = {64: 4, 32: 3}  # stride-2 blocks before the final 4x4 one, per input size


class DCGANDiscriminator(nn.Module):
    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        if image_size not in BLOCKS:
            raise ValueError(f"image_size must be one of {sorted(BLOCKS)}, got {image_size}")
        widths = [ndf * 2**i for i in range(BLOCKS[image_size])]  # 64: ndf, 2 ndf, 4 ndf, 8 ndf
        layers = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init_)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N,) for images (N, channels, image_size, image_size) in [-1, 1]."""
        return self.main(images).view(len(images))
