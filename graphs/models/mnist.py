"""MNIST networks: today's pytorch/examples net (the default) and the seed's (``net: "seed"``).

``Mnist``, the net of pytorch/examples' mnist/main.py (the same layers as Keras's mnist_cnn.py,
published at 99.25% test accuracy after 12 epochs of Adadelta), p = ``dropout``:

| layer | output (N, C, H, W) |
|---|---|
| input | 1 x 28 x 28 |
| conv 3x3, 1 -> 32; ReLU | 32 x 26 x 26 |
| conv 3x3, 32 -> 64; ReLU; max-pool 2; dropout p/2 | 64 x 12 x 12 |
| flatten; fc 9216 -> 128; ReLU; dropout p | 128 |
| fc 128 -> 10; log-softmax | 10 |

``SeedMnist``, the seed's net (the classic pytorch/examples net, 21,840 parameters):

| layer | output (N, C, H, W) |
|---|---|
| input | 1 x 28 x 28 |
| conv 5x5, 1 -> 10; max-pool 2; ReLU | 10 x 12 x 12 |
| conv 5x5, 10 -> 20; dropout2d p; max-pool 2; ReLU | 20 x 4 x 4 |
| flatten; fc 320 -> 50; ReLU; dropout p | 50 |
| fc 50 -> 10; log-softmax | 10 |
"""

import torch
import torch.nn.functional as F
from torch import nn


class Mnist(nn.Module):
    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, num_classes) for images (N, 1, 28, 28)."""
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.dropout(F.max_pool2d(x, 2), self.dropout / 2, training=self.training)
        x = F.dropout(F.relu(self.fc1(x.flatten(1))), self.dropout, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


class SeedMnist(nn.Module):
    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, num_classes) for images (N, 1, 28, 28)."""
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.dropout(x, self.dropout, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)
