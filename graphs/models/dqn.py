"""Q-networks for DQN: an MLP over the state vector, and the seed's CNN over screen differences."""

from __future__ import annotations

import torch
from torch import nn


class QMlp(nn.Module):
    """state (N, obs_dim) -> fc -> ReLU -> ... -> fc -> Q-values (N, num_actions)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int]) -> None:
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class QConv(nn.Module):
    """The seed's network over the difference of two screens.

    | layer | output (C x H x W) for a 1 x 40 x 80 input |
    |---|---|
    | conv 5x5 stride 2, 1 -> 16; BN; ReLU | 16 x 18 x 38 |
    | conv 5x5 stride 2, 16 -> 32; BN; ReLU | 32 x 7 x 17 |
    | conv 5x5 stride 2, 32 -> 32; BN; ReLU | 32 x 2 x 7 |
    | flatten; fc 448 -> num_actions | num_actions |
    """

    def __init__(self, in_shape: tuple[int, int, int], num_actions: int) -> None:
        super().__init__()
        channels = [in_shape[0], 16, 32, 32]
        blocks = []
        height, width = in_shape[1:]
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            blocks += [nn.Conv2d(c_in, c_out, kernel_size=5, stride=2), nn.BatchNorm2d(c_out), nn.ReLU()]
            # Counted, not probed with a forward pass: that would move BatchNorm's running statistics.
            height, width = (height - 5) // 2 + 1, (width - 5) // 2 + 1
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels[-1] * height * width, num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.float()).flatten(1))
