"""Learned group convolution (CondenseNet, Huang et al. 2018) and the layers it condenses into.

Training uses ``LearnedGroupConv`` (BN-ReLU-1x1 conv whose weight is multiplied by a mask) and
``LearnedLinear`` (a linear layer with a mask over its input features). Training progress drives
the masks: ``update(progress)`` prunes at the stage boundaries, and the masks are buffers, so a
checkpoint holds them. After training, ``CondensedLayer.of`` turns a learned group conv and the 3x3
convolution after it into one test-time layer (gather the kept inputs, grouped 1x1 convolution, no
masks), and ``LearnedLinear.condensed()`` the classifier into ``CondenseLinear``. The outputs are the
masked layers' outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def condensation_stage(progress: float, condense_factor: int) -> int:
    """The pruning stage reached at ``progress`` (0..1 of training): stage k from k / (2(C-1)), at most C-1."""
    steps = condense_factor - 1
    return sum(1 for k in range(1, steps + 1) if 2 * progress >= k / steps)


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


def _bn_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch norm in eval mode as x * scale + shift."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


class CondensedLayer(nn.Module):
    """Test-time dense layer of CondenseNet: the new ``growth`` channels of a learned group conv and a 3x3 group conv.

    It computes what the masked layers compute (BN-ReLU-masked 1x1 conv, BN-ReLU-3x3 group conv) with
    fewer operations and fewer passes over memory:
    - one gather of the inputs every group keeps (``index``), group after group;
    - the first batch norm and ReLU as one clamp: relu(s x + t) = s clamp(x, low, high) + t, with
      (low, high) = (-t/s, inf) where s > 0 and (-inf, -t/s) where s < 0; s and t go into the 1x1 weights and bias.
      It is one ``clamp_min_`` (``clamp_max_`` too only in a layer where some s < 0, which trained nets rarely have);
      a clamp between two tensors would take longer than batch norm and ReLU together;
    - the grouped 1x1 convolution as one batched matrix product (``weight1``: groups x out/groups x kept), the
      second batch norm folded into it (its scale into the weights, its shift into ``bias1``);
    - the channel shuffle absorbed into the 3x3 convolution: ``weight3`` is the group conv's block-diagonal weight
      as a dense one, its input channels permuted to the 1x1's group-major order (no shuffle copy; on the CPU a
      dense 3x3 convolution over so few channels runs faster than the grouped one).
    """

    def __init__(self, in_channels: int, kept: int, groups: int, mid_channels: int, growth: int, groups3: int) -> None:
        super().__init__()
        self.in_channels, self.kept, self.groups, self.groups3 = in_channels, kept, groups, groups3
        self.register_buffer("index", torch.zeros(groups * kept, dtype=torch.long))
        self.register_buffer("low", torch.zeros(1, groups * kept, 1, 1))
        self.register_buffer("high", torch.zeros(1, groups * kept, 1, 1))
        self.weight1 = nn.Parameter(torch.zeros(groups, mid_channels // groups, kept))
        self.bias1 = nn.Parameter(torch.zeros(groups, mid_channels // groups, 1))
        self.weight3 = nn.Parameter(torch.zeros(growth, mid_channels, 3, 3))
        self.two_sided = False  # whether ``high`` bounds any channel (follows the buffers, loaded too)
        self.register_load_state_dict_post_hook(lambda module, _: module.bounds_changed())

    def bounds_changed(self) -> None:
        self.two_sided = bool(torch.isfinite(self.high).any())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The new channels (B, growth, H, W) from features ``x`` (B, >= in_channels, H, W)."""
        b, _, h, w = x.shape
        y = x.index_select(1, self.index).clamp_min_(self.low)
        if self.two_sided:
            y = y.clamp_max_(self.high)
        z = torch.matmul(self.weight1, y.view(b, self.groups, self.kept, h * w)).add_(self.bias1).relu_()
        return F.conv2d(z.view(b, -1, h, w), self.weight3, padding=1)

    def count_flops(self, x: torch.Tensor) -> tuple[int, int]:
        """The authors' count of the layers it stands for: two ReLUs, the grouped 1x1 and 3x3 convolutions, and
        the parameters of two batch norms and two grouped convolutions."""
        pixels = x.shape[2] * x.shape[3]
        gathered, mid, growth = self.groups * self.kept, self.weight3.shape[1], self.weight3.shape[0]
        conv1, conv3 = self.weight1.numel(), mid * growth * 9 // self.groups3
        return (gathered + conv1 + mid + conv3) * pixels, 2 * gathered + conv1 + 2 * mid + conv3

    @classmethod
    @torch.no_grad()
    def of(cls, learned: LearnedGroupConv, norm3: nn.BatchNorm2d, conv3: nn.Conv2d) -> CondensedLayer:
        """The test-time layer of a learned group conv, then BN-ReLU-``conv3`` (the same outputs, at any stage)."""
        kept_inputs = learned.kept_inputs()
        kept = int(kept_inputs[0].sum())
        groups, mid, growth = learned.groups, learned.out_channels, conv3.out_channels
        layer = cls(learned.in_channels, kept, groups, mid, growth, conv3.groups).to(learned.mask.device)
        index = kept_inputs.nonzero()[:, 1]  # group by group, inputs in ascending order
        layer.index.copy_(index)
        s, t = (v[index] for v in _bn_affine(learned.norm))
        bound = -t / torch.where(s == 0, torch.ones_like(s), s)
        inf = torch.full_like(s, float("inf"))
        layer.low.view(-1).copy_(torch.where(s > 0, bound, -inf))
        layer.high.view(-1).copy_(torch.where(s < 0, bound, inf))
        layer.bounds_changed()
        t = torch.where(s == 0, t.clamp(min=0), t)  # s = 0: the constant relu(t)
        d = mid // groups
        # Row k of group g is the masked conv's output channel k * groups + g; its inputs are group g's kept ones.
        weight = learned.conv.weight.view(d, groups, learned.in_channels)
        s3, t3 = _bn_affine(norm3)
        for g in range(groups):
            part = slice(g * kept, (g + 1) * kept)
            rows = torch.arange(d, device=index.device) * groups + g
            w = weight[:, g, index[part]]  # (d, kept)
            layer.weight1[g] = w * s[part] * s3[rows, None]  # the clamp's scale and the second norm's folded in
            layer.bias1[g, :, 0] = (w @ t[part]) * s3[rows] + t3[rows]
        # conv3 as a dense conv over the 1x1's group-major channels (g * d + k is the masked conv's k * groups + g).
        shuffled = torch.arange(mid, device=index.device).view(d, groups).t().reshape(-1)
        per_in, per_out = mid // conv3.groups, growth // conv3.groups
        dense = torch.zeros(growth, mid, 3, 3, device=index.device)
        for g in range(conv3.groups):
            rows, columns = slice(g * per_out, (g + 1) * per_out), slice(g * per_in, (g + 1) * per_in)
            dense[rows, columns] = conv3.weight[rows]
        layer.weight3.copy_(dense[:, shuffled])
        return layer


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
