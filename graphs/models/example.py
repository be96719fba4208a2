"""Template network: replace it with your own model (one file per network, as here).

| layer | output |
|---|---|
| input | in_features |
| fc in_features -> hidden; ReLU | hidden |
| fc hidden -> num_classes | num_classes (logits) |
"""

import torch
from torch import nn


class Example(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
