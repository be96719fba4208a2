"""Template network: a small CNN classifier. Replace the layers with your own and keep this table true.

| layer | output |
|---|---|
| input | channels x S x S |
| conv 3x3, channels -> hidden, pad 1; ReLU; max-pool 2 | hidden x S/2 x S/2 |
| conv 3x3, hidden -> 2 hidden, pad 1; ReLU; max-pool 2 | 2 hidden x S/4 x S/4 |
| flatten; fc -> num_classes | num_classes (logits) |
"""

import torch
from torch import nn


class Example(nn.Module):
    def __init__(self, channels: int, hidden: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(hidden, 2 * hidden, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * hidden * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
