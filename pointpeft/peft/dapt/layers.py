"""DAPT layers: the dynamic adapter (per-token scale), SSF scale/shift, and the internal prompt."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.peft.adapterx.layers import PromptGenerator
from pointpeft.utils.modules import TransientState

SSF_INITS = ("normal", "identity")


def init_scale_shift(gamma: nn.Parameter, beta: nn.Parameter, init: str) -> None:
    """``normal``: gamma ~ N(1, 0.02), beta ~ N(0, 0.02), as DAPT's ``init_tfts``; ``identity``: 1 and 0."""
    with torch.no_grad():
        if init == "normal":
            nn.init.normal_(gamma, mean=1.0, std=0.02)
            nn.init.normal_(beta, std=0.02)
        elif init == "identity":
            nn.init.ones_(gamma)
            nn.init.zeros_(beta)
        else:
            raise ValueError(f"ssf_init must be one of {list(SSF_INITS)}, got {init!r}")


class Ssf(nn.Module):
    """SSF: ``y * gamma + beta`` over the last dimension."""

    def __init__(self, dim: int, init: str = "normal") -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        init_scale_shift(self.gamma, self.beta, init)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.gamma + self.beta

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the scaled module: scale/shift its output."""
        return self(output)

    def tokenizer_hook(self, model: nn.Module, out: Any) -> Any:
        """Tokenizer hook of a point transformer: scale/shift the patch tokens (outside the tokenizer's no_grad)."""
        return dataclasses.replace(out, tokens=self(out.tokens))


class DynamicAdapter(TransientState, nn.Module):
    """``relu(W_s z) * up(dropout(gelu(down(z))))`` with ``z = LayerNorm(x)``: a bottleneck whose output is scaled per
    token by a learned non-negative significance. ``up`` starts at zero, so the adapter adds nothing at first.

    With ``prompt`` it also owns the block's :class:`PromptGenerator` (GELU, mean over tokens, scale/shift, DAPT's
    ``tfts_*_3``) and keeps its last output until the block's forward hook turns it into the block's prompt token.
    """

    _TRANSIENT = ("_last_output",)

    def __init__(self, dim: int, r: int, dropout: float = 0.0, prompt: bool = False,
                 prompt_init: str = "normal") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.scale = nn.Linear(dim, 1)
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)
        self.dropout = nn.Dropout(dropout)
        self.prompt_generator = PromptGenerator(dim, gelu=True) if prompt else None
        if self.prompt_generator is not None and prompt_init == "normal":
            init_scale_shift(self.prompt_generator.gamma, self.prompt_generator.beta, "normal")
        for lin in (self.scale, self.down):
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._last_output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        s = F.relu(self.scale(z))
        out = self.up(self.dropout(F.gelu(self.down(z)))) * s
        self._last_output = out if self.prompt_generator is not None else None
        return out

    def append_prompt(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Block forward hook: append the internal prompt (B, 1, D) made from this block's adapter output."""
        if self._last_output is None or self.prompt_generator is None:
            raise RuntimeError("DAPT: the block ran without its adapter, no internal prompt to append")
        prompt = self.prompt_generator(self._last_output)
        self._last_output = None
        return torch.cat([output, prompt.to(output.dtype)], dim=1)


    def extra_repr(self) -> str:
        return f"r={self.down.out_features}, prompt={self.prompt_generator is not None}"
