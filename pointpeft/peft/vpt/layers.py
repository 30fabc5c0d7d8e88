"""One block's deep prompts, inserted by a forward pre-hook of the block."""

from __future__ import annotations

import torch
from torch import nn


class BlockPrompts(nn.Module):
    """``num_prompts`` learnable tokens appended to the block's input, replacing the previous block's prompts.

    The first block's prompts are appended to the backbone's tokens; every later block first drops the last
    ``num_prompts`` tokens (its predecessor's prompts) and appends its own, as VPT-deep does.
    """

    def __init__(self, num_prompts: int, dim: int, replaces_previous: bool, dropout: float = 0.0,
                 prompt_pos: bool = False) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.replaces_previous = replaces_previous
        self.prompts = nn.Parameter(torch.zeros(1, num_prompts, dim))
        self.dropout = nn.Dropout(dropout)
        self.prompt_pos: nn.Parameter | None = None
        if prompt_pos:  # IDPT's point VPT-deep: a position per prompt, added with the patches' positions
            self.prompt_pos = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, num_prompts, dim), std=0.02))

    def insert(self, block: nn.Module, args: tuple) -> tuple:
        """Block forward pre-hook."""
        x = args[0]
        if self.replaces_previous:
            x = x[:, : -self.num_prompts]
        prompts = self.dropout(self.prompts)
        if self.prompt_pos is not None:  # the block input is tokens + positions: the prompts' positions join here
            prompts = prompts + self.prompt_pos
        prompts = prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([x, prompts], dim=1), *args[1:])

    def extra_repr(self) -> str:
        return (f"num_prompts={self.num_prompts}, replaces_previous={self.replaces_previous}, "
                f"prompt_pos={self.prompt_pos is not None}")
