"""The LoRA branch of one linear layer."""

from __future__ import annotations

import math

import torch
from torch import nn


class LoraBranch(nn.Module):
    """``scaling * B A dropout(x)``: A (r, in) kaiming-uniform, B (out, r) zero, so the branch starts at zero."""

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.scaling = float(scaling)
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t() * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``scaling * B @ A`` (out, in) that merging adds to the frozen weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"r={self.lora_A.shape[0]}, scaling={self.scaling}"
