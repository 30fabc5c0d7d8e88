"""The bottleneck adapter shared by Adapter and AdaptFormer."""

from __future__ import annotations

import math

import torch
from torch import nn


class Bottleneck(nn.Module):
    """[LayerNorm] -> down (D->r) -> activation -> dropout -> up (r->D, zero-initialised) -> * scale [-> LayerNorm].

    The down projection uses AdaptFormer's kaiming-uniform ("lora") init; up and both biases start at zero, so the
    adapter adds exactly nothing at initialisation (with ``layernorm: out`` too: LayerNorm of a zero vector is its
    bias, which starts at zero).
    """

    def __init__(self, dim: int, r: int, dropout: float = 0.0, scale: float = 1.0, learnable_scale: bool = False,
                 layernorm: str = "none", activation: str = "gelu") -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim) if layernorm == "in" else None
        self.down = nn.Linear(dim, r)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(r, dim)
        self.norm_out = nn.LayerNorm(dim) if layernorm == "out" else None
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_in is not None:
            x = self.norm_in(x)
        y = self.up(self.dropout(self.act(self.down(x)))) * self.scale
        if self.norm_out is not None:
            y = self.norm_out(y)
        return y
