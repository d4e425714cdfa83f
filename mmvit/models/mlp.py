"""Transformer MLP: Linear -> GELU -> Linear."""

from __future__ import annotations

import torch
import torch.nn as nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, bias: bool = False, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias, device=device, dtype=dtype)
        self.act = nn.GELU()  # exact (erf) GELU, as ViT and timm use
        self.fc2 = nn.Linear(hidden, dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
