"""Multiply-adds and parameters of one forward pass, by the conventions of CondenseNet's authors.

Their ``measure_layer`` (batch 1): a convolution counts Cin x Cout x kh x kw x Hout x Wout / groups
multiply-adds, a linear layer its weights plus its bias, a ReLU its input's elements, average
pooling C x Hout x Wout x k^2 (global pooling: its input's elements), batch norm and dropout
nothing but their parameters. Operations outside modules (concatenation, indexing, reshapes)
count nothing. A module with a ``count_flops(x) -> (flops, params)`` method is counted by it and
not looked into (CondenseNet's learned group convolution counts its final density that way).
"""

from __future__ import annotations

import torch
from torch import nn

_FREE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def layer_flops(layer: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one leaf ``layer`` on input ``x`` (batch 1); TypeError for a type it does not know."""
    if isinstance(layer, nn.Conv2d):
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        dh, dw = layer.dilation
        out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return layer.in_channels * layer.out_channels * kh * kw * out_h * out_w // layer.groups
    if isinstance(layer, nn.Linear):
        return layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
    if isinstance(layer, (nn.AvgPool2d, nn.MaxPool2d)):
        (kh, kw), (sh, sw), (ph, pw) = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
        out_h, out_w = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        return x.shape[1] * out_h * out_w * kh * kw
    if isinstance(layer, (nn.AdaptiveAvgPool2d, *_ELEMENTWISE)):
        return x.numel()
    if isinstance(layer, _FREE):
        return 0
    raise TypeError(f"count_flops: no rule for a {type(layer).__name__} layer; give it a count_flops(x) method")


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(multiply-adds, parameters) of ``model`` on one input of ``input_shape`` (C, H, W), in eval mode."""
    counted = {"flops": 0, "params": 0}
    hooks = []

    def measure(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if hasattr(module, "count_flops"):
            flops, params = module.count_flops(x)
        else:
            flops, params = layer_flops(module, x), sum(p.numel() for p in module.parameters())
        counted["flops"] += int(flops)
        counted["params"] += int(params)

    def attach(module: nn.Module) -> None:
        children = list(module.children())
        if hasattr(module, "count_flops") or not children:
            hooks.append(module.register_forward_pre_hook(measure))
            return
        for child in children:
            attach(child)

    attach(model)
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return counted["flops"], counted["params"]
