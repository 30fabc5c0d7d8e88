"""PointLoRA layers: the shared prompt MLPs, the LoRA branch that adds one of them, and the per-block prompts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pointpeft.peft.lora.layers import LoraBranch
from pointpeft.peft.token_select import MultiScaleTokenSelector


def prompt_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """``Linear -> GELU -> Linear``, weights trunc-normal(0.02) and biases zero (the released ``_init_weights``)."""
    mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features))
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return mlp


class PromptedLoraBranch(nn.Module):
    """``B A x + mlp(x)``: our LoRA branch plus a prompt MLP shared by the same linear of every block.

    The MLP belongs to :class:`PointLoraModules` (one copy in the state dict); the branch only refers to it.
    The released ``LoRALinear`` multiplies the MLP by a scalar ``weight`` that starts at 1 and never trains (no
    trained name pattern matches it), so it is left out.
    """

    def __init__(self, lora: LoraBranch, prompt: nn.Module) -> None:
        super().__init__()
        self.lora = lora
        self._prompt = (prompt,)  # a tuple: not registered as a child here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora(x) + self._prompt[0](x)


class PointLoraModules(nn.Module):
    """What PointLoRA adds once per model: the token selector, the two token prompt MLPs, the per-target prompt MLPs.

    :meth:`before_block` (a forward pre-hook of every block, whose input already holds the position embeddings)
    adds ``prompt_patch`` to the G patch tokens and ``prompt_selected`` to the selected tokens that follow them, as
    the released ``TransformerEncoder.forward`` does before each block.
    """

    def __init__(self, dim: int, hidden: int, num_patches: int, selector: MultiScaleTokenSelector,
                 target_dims: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.selector = selector
        self.prompt_patch = prompt_mlp(dim, hidden, dim)
        self.prompt_selected = prompt_mlp(dim, hidden, dim)
        self.prompt_linear = nn.ModuleDict({name: prompt_mlp(i, hidden, o) for name, (i, o) in target_dims.items()})

    def before_block(self, block: nn.Module, args: tuple) -> tuple[Any, ...]:
        x, g, k = args[0], self.num_patches, self.selector.num_selected
        patches, selected = x[:, 1 : 1 + g], x[:, 1 + g : 1 + g + k]
        x = torch.cat([x[:, :1], patches + self.prompt_patch(patches), selected + self.prompt_selected(selected),
                       x[:, 1 + g + k :]], dim=1)
        return (x, *args[1:])
