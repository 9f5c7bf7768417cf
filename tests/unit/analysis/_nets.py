"""Small networks shared by the analysis tests."""

from __future__ import annotations

import torch
from torch import nn


class SharedReLU(nn.Module):
    """One ReLU module called at two places (as in torchvision's ResNet); seeds the global RNG
    with 0, as the tests that use it expect."""

    def __init__(self, out_features: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.relu = nn.Linear(3, 5), nn.Linear(5, out_features), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.b(self.relu(self.a(x))))


class TokenNet(nn.Module):
    """Token ids in (embedding, linear, ReLU), summed over positions; seeds the global RNG with
    0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.fc, self.relu = nn.Embedding(10, 4), nn.Linear(4, 6), nn.ReLU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc(self.embed(tokens))).sum(1)
