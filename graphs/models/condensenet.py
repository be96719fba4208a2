"""CondenseNet (Huang, Liu, van der Maaten, Weinberger, CVPR 2018): DenseNet with learned group convolutions.

CondenseNet-86 on CIFAR (32x32 input; the defaults: stages 14-14-14, growth 8-16-32, bottleneck 4,
group1x1 = group3x3 = condense_factor = 4):

| part              | layers                                                               | output    |
|-------------------|----------------------------------------------------------------------|-----------|
| init_conv         | 3x3 conv, 2 x growth[0] = 16 channels                                | 16 x 32^2 |
| denseblock_1      | 14 x [learned group conv 1x1, 32 (G=4, C=4); 3x3 group conv, 8 (G=4)] | 128 x 32^2|
| transition_1      | 2x2 average pool, stride 2                                           | 128 x 16^2|
| denseblock_2      | 14 x [learned group conv 1x1, 64; 3x3 group conv, 16]                 | 352 x 16^2|
| transition_2      | 2x2 average pool, stride 2                                           | 352 x 8^2 |
| denseblock_3      | 14 x [learned group conv 1x1, 128; 3x3 group conv, 32]                | 800 x 8^2 |
| norm_last, pool   | BN, ReLU, global average pool                                        | 800       |
| classifier        | linear 800 -> classes (keeps 400 inputs once condensed)              | 10        |

Every conv is pre-activated (BN-ReLU-conv); each dense layer concatenates its ``growth`` new
channels to its input. The authors' table: 65.8M multiply-adds and 0.52M parameters for the
condensed network (see utils/examples/flops.py for the counting conventions).

Condensation: ``update_condensation(progress)`` is called every iteration with progress = the
fraction of training done; each learned group conv prunes at progress k / (2(C-1)), k = 1..C-1,
and the classifier drops half its input features at progress 1/2 (the authors drop them after
training, without the fine-tuning the second half of training gives here). ``condense(model)``
returns the test-time network, computing the same outputs as the masked network: per dense layer
one index gather, batch norms folded (the first with its ReLU into a clamp), the grouped 1x1
convolution as one batched matrix product, the channel shuffle absorbed into the 3x3 convolution
(``CondensedLayer``); each block writes its layers' channels into one tensor (``CondensedBlock``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from graphs.models.custom_layers.learned_group_conv import CondensedLayer, LearnedGroupConv, LearnedLinear


def _conv(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """BN-ReLU-3x3 group convolution."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(in_channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups, bias=False),
        )
    )


class DenseLayer(nn.Module):
    """Learned group conv 1x1 to bottleneck x growth, 3x3 group conv to growth; output = cat(input, new)."""

    def __init__(
        self, in_channels: int, growth: int, bottleneck: int, group1x1: int, group3x3: int, condense_factor: int
    ) -> None:
        super().__init__()
        self.conv_1 = LearnedGroupConv(in_channels, bottleneck * growth, group1x1, condense_factor)
        self.conv_2 = _conv(bottleneck * growth, growth, group3x3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv_2(self.conv_1(x))], 1)


class CondenseNet(nn.Module):
    """The training-time network (masked learned group convolutions); see the module docstring's table."""

    def __init__(
        self,
        stages: Sequence[int] = (14, 14, 14),
        growth: Sequence[int] = (8, 16, 32),
        bottleneck: int = 4,
        group1x1: int = 4,
        group3x3: int = 4,
        condense_factor: int = 4,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_arguments(stages, growth, bottleneck, group1x1, group3x3, condense_factor)
        channels = 2 * growth[0]
        self.features = nn.Sequential()
        self.features.add_module("init_conv", nn.Conv2d(in_channels, channels, 3, padding=1, bias=False))
        for i, (layers, k) in enumerate(zip(stages, growth, strict=True)):
            if i > 0:
                self.features.add_module(f"transition_{i}", nn.AvgPool2d(2, stride=2))
            block = nn.Sequential()
            for j in range(layers):
                layer = DenseLayer(channels + j * k, k, bottleneck, group1x1, group3x3, condense_factor)
                block.add_module(f"denselayer_{j + 1}", layer)
            self.features.add_module(f"denseblock_{i + 1}", block)
            channels += layers * k
        self.features.add_module("norm_last", nn.BatchNorm2d(channels))
        self.features.add_module("relu_last", nn.ReLU(inplace=True))
        self.features.add_module("pool_last", nn.AdaptiveAvgPool2d(1))
        self.classifier = LearnedLinear(channels, num_classes)
        for m in self.modules():  # the authors' initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def update_condensation(self, progress: float) -> None:
        """Prune every learned layer to the stage ``progress`` (0..1 of training) reaches."""
        for m in self.modules():
            if isinstance(m, (LearnedGroupConv, LearnedLinear)):
                m.update(progress)

    def lasso_loss(self) -> torch.Tensor:
        """The sum of the learned group convs' group-lasso terms."""
        return sum(m.lasso_loss() for m in self.modules() if isinstance(m, LearnedGroupConv))

    def condensation_stage(self) -> int:
        """The pruning stage the learned group convs have reached (0 .. condense_factor - 1)."""
        return min(int(m.stage) for m in self.modules() if isinstance(m, LearnedGroupConv))

    def fully_condensed(self) -> bool:
        """Whether every learned layer has reached its final structure."""
        return all(
            int(m.stage) == m.condense_factor - 1 if isinstance(m, LearnedGroupConv) else not bool(m.mask.all())
            for m in self.modules()
            if isinstance(m, (LearnedGroupConv, LearnedLinear))
        )


def check_arguments(
    stages: Sequence[int], growth: Sequence[int], bottleneck: int, group1x1: int, group3x3: int, condense_factor: int
) -> None:
    """ValueError('<argument>: <problem>') when the channel counts do not divide as the layers need."""
    if len(stages) != len(growth) or not stages:
        raise ValueError(f"growth: one growth rate per stage expected ({len(stages)} stages), got {list(growth)}")
    if any(n < 1 for n in stages):
        raise ValueError(f"stages: every stage needs at least one layer, got {list(stages)}")
    for k in growth:
        if k < 1 or k % group3x3 or (bottleneck * k) % group1x1:
            raise ValueError(
                f"growth: each growth rate must be divisible by group3x3 ({group3x3}) and bottleneck x growth "
                f"by group1x1 ({group1x1}), got {list(growth)}"
            )
    channels = 2 * growth[0]
    for layers, k in zip(stages, growth, strict=True):
        for j in range(layers):
            width = channels + j * k
            if width % condense_factor or width % group1x1:
                raise ValueError(
                    f"condense_factor: every dense layer's input ({width} channels here) must be divisible by "
                    f"condense_factor ({condense_factor}) and group1x1 ({group1x1}); growth {list(growth)}"
                )
        channels += layers * k


class CondensedBlock(nn.Module):
    """Test-time dense block: each layer writes its new channels into one output tensor (no concatenation per
    layer, which copies every channel so far again)."""

    def __init__(self, layers: Sequence[CondensedLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.growth = [layer.weight3.shape[0] for layer in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # a graph has no in-place writes: each would copy the whole tensor
            for layer in self.layers:
                x = torch.cat([x, layer(x)], 1)
            return x
        b, c, h, w = x.shape
        out = x.new_empty(b, c + sum(self.growth), h, w)
        out[:, :c] = x
        for layer, k in zip(self.layers, self.growth, strict=True):
            out[:, c : c + k] = layer(out)  # reads only the c channels written so far
            c += k
        return out


def condense(model: CondenseNet) -> nn.Module:
    """The test-time network of a trained ``model`` (left unchanged): the same outputs, fewer operations."""
    condensed = copy.deepcopy(model)
    for name, block in model.features.named_children():
        if name.startswith("denseblock_"):
            layers = [CondensedLayer.of(m.conv_1, m.conv_2.norm, m.conv_2.conv) for m in block]
            setattr(condensed.features, name, CondensedBlock(layers))
    condensed.classifier = model.classifier.condensed()
    return condensed


def condensed_skeleton(**arguments) -> nn.Module:
    """A condensed CondenseNet of the given arguments with placeholder weights (to load a condensed checkpoint)."""
    model = CondenseNet(**arguments)
    model.update_condensation(1.0)
    return condense(model)
