"""Learned group convolution (CondenseNet, Huang et al. 2018) and the layers it condenses into.

Training uses ``LearnedGroupConv`` (BN-ReLU-1x1 conv whose weight is multiplied by a mask) and
``LearnedLinear`` (a linear layer with a mask over its input features). Training progress drives
the masks: ``update(progress)`` prunes at the stage boundaries, and the masks are buffers, so a
checkpoint holds them. After training, ``condensed()`` turns each into its test-time layer
(``CondenseConv``, ``CondenseLinear``): the kept inputs gathered by an index, a grouped
convolution, a channel shuffle. The outputs are the masked layers' outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def condensation_stage(progress: float, condense_factor: int) -> int:
    """The pruning stage reached at ``progress`` (0..1 of training): stage k from k / (2(C-1)), at most C-1."""
    steps = condense_factor - 1
    return sum(1 for k in range(1, steps + 1) if 2 * progress >= k / steps)


def shuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (B, G*n, H, W) with channels g*n + k -> k*G + g."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class LearnedGroupConv(nn.Module):
    """BN-ReLU-1x1 convolution that learns which inputs each of its ``groups`` output groups keeps.

    Output channel o belongs to group o % groups (the interleaving the channel shuffle of the
    condensed layer undoes). Over the first half of training, at each of the condense_factor - 1
    stages, every group drops the in_channels / condense_factor remaining inputs of smallest
    summed |weight|; from progress 1/2 on each group keeps in_channels / condense_factor inputs.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, condense_factor: int) -> None:
        super().__init__()
        if in_channels % condense_factor or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"LearnedGroupConv: in_channels {in_channels} must be divisible by condense_factor {condense_factor} "
                f"and by groups {groups}, out_channels {out_channels} by groups"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.condense_factor = groups, condense_factor
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.register_buffer("mask", torch.ones(out_channels, in_channels, 1, 1))
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.relu(self.norm(x)), self.conv.weight * self.mask)

    def kept_inputs(self) -> torch.Tensor:
        """(groups, in_channels) bool: which inputs each group still uses."""
        return self.mask.view(self.out_channels // self.groups, self.groups, self.in_channels)[0].bool()

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """Prune to the stage that ``progress`` reaches (one stage at a time if it skipped some)."""
        target = condensation_stage(progress, self.condense_factor)
        while int(self.stage) < target:
            self._drop(self.in_channels // self.condense_factor)
            self.stage += 1

    def _drop(self, count: int) -> None:
        importance = (self.conv.weight * self.mask).abs().view(self.out_channels // self.groups, self.groups, -1)
        importance = importance.sum(0).masked_fill(~self.kept_inputs(), float("inf"))  # (groups, in_channels)
        weakest = importance.topk(count, dim=1, largest=False).indices
        kept = self.kept_inputs().scatter(1, weakest, False)
        self.mask.copy_(kept.expand(self.out_channels // self.groups, -1, -1).reshape_as(self.mask))

    def lasso_loss(self) -> torch.Tensor:
        """Group lasso over (group, input) weight groups; zero once the final structure is fixed."""
        if int(self.stage) >= self.condense_factor - 1:
            return self.conv.weight.new_zeros(())
        weight = (self.conv.weight * self.mask).pow(2).view(self.out_channels // self.groups, self.groups, -1)
        return weight.sum(0).clamp(min=1e-6).sqrt().sum()

    def count_flops(self, x: torch.Tensor) -> tuple[int, int]:
        """The authors' count: ReLU elements, BN parameters, and the 1x1 conv at its final density 1/C."""
        conv = self.in_channels * self.out_channels * x.shape[2] * x.shape[3] // self.condense_factor
        params = sum(p.numel() for p in self.norm.parameters()) + self.conv.weight.numel() // self.condense_factor
        return x.numel() + conv, params

    @torch.no_grad()
    def condensed(self) -> CondenseConv:
        """The test-time layer with the same outputs (every group must keep as many inputs: any stage)."""
        kept = self.kept_inputs()
        per_group = int(kept[0].sum())
        layer = CondenseConv(self.in_channels, self.out_channels, self.groups, per_group).to(self.mask.device)
        index = kept.nonzero()[:, 1]  # group by group, inputs in ascending order
        layer.index.copy_(index)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(layer.norm, name).copy_(getattr(self.norm, name)[index])
        layer.norm.num_batches_tracked.copy_(self.norm.num_batches_tracked)
        layer.norm.eps, layer.norm.momentum = self.norm.eps, self.norm.momentum
        d_out = self.out_channels // self.groups
        # grouped conv output g*d_out + k is original output k*groups + g; its inputs are group g's kept ones
        weight = self.conv.weight.view(d_out, self.groups, self.in_channels)
        for g in range(self.groups):
            columns = index[g * per_group : (g + 1) * per_group]
            layer.conv.weight[g * d_out : (g + 1) * d_out, :, 0, 0] = weight[:, g, columns]
        return layer


class CondenseConv(nn.Module):
    """Test-time learned group conv: gather the kept inputs, BN-ReLU, grouped 1x1 conv, channel shuffle."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, kept_per_group: int) -> None:
        super().__init__()
        self.groups = groups
        width = groups * kept_per_group
        self.register_buffer("index", torch.zeros(width, dtype=torch.long))
        self.norm = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(width, out_channels, kernel_size=1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.relu(self.norm(x.index_select(1, self.index))))
        return shuffle_channels(x, self.groups)


class LearnedLinear(nn.Linear):
    """A linear layer that keeps the fraction ``keep`` of its input features once ``progress`` reaches ``at``.

    The features kept are those of largest summed |weight| over the outputs (the CondenseNet
    authors' criterion for the classifier); pruning during training, rather than after it,
    lets the rest of training adapt and makes the condensed layer compute the same outputs.
    """

    def __init__(self, in_features: int, out_features: int, keep: float = 0.5, at: float = 0.5) -> None:
        super().__init__(in_features, out_features)
        self.keep, self.at = keep, at
        self.register_buffer("mask", torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def kept_features(self) -> int:
        return int(self.in_features * self.keep)

    @torch.no_grad()
    def update(self, progress: float) -> None:
        if progress >= self.at and bool(self.mask.all()):
            strongest = self.weight.abs().sum(0).topk(self.kept_features()).indices
            self.mask.zero_().index_fill_(0, strongest, 1.0)

    @torch.no_grad()
    def condensed(self) -> CondenseLinear:
        index = self.mask.nonzero()[:, 0]
        layer = CondenseLinear(len(index), self.out_features).to(self.weight.device)
        layer.index.copy_(index)
        layer.linear.weight.copy_(self.weight[:, index])
        layer.linear.bias.copy_(self.bias)
        return layer


class CondenseLinear(nn.Module):
    """Test-time classifier: gather the kept input features, then a smaller linear layer."""

    def __init__(self, kept: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("index", torch.zeros(kept, dtype=torch.long))
        self.linear = nn.Linear(kept, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(1, self.index))
