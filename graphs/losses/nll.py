"""Negative log-likelihood over log-probabilities, the loss of the MNIST net (log-softmax output)."""

import torch
import torch.nn.functional as F
from torch import nn


class NLLLoss(nn.Module):
    """Mean NLL of log-probabilities (N, C) against class indices (N,), computed in float32."""

    def forward(self, log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Under AMP the logits arrive in half precision; the loss is summed in float32.
        return F.nll_loss(log_probs.float(), target)
