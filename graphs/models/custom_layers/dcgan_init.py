"""DCGAN's weight initialisation (Radford et al. 2016, section 4), shared by its generator and discriminator."""

from torch import nn


def dcgan_init_(module: nn.Module) -> None:
    """Convolution weights N(0, 0.02), batch-norm weights N(1, 0.02), biases 0; in place, for ``module.apply``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
