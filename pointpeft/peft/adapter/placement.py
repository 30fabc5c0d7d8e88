"""AdaptFormer's placement: an adapter beside the FFN that reads the block's residual stream (the FFN's input before
its norm) and whose output joins the block's output outside the FFN's drop-path.

AdaptFormer (ShoufaChen/AdaptFormer ``models/custom_modules.py``): ``adapt_x = adaptmlp(x)`` on the post-attention
residual ``x``, then ``x = residual + drop_path(fc2(...)) + adapt_x``; MoSA's ``MoSABlock`` does the same with its own
LayerNorm. A forward pre-hook of ``norm2`` keeps its input; a forward hook of the block adds the adapter's output.
"""

from __future__ import annotations

import torch
from torch import nn

from pointpeft.peft.attach import add_block_hooks


class ResidualBranch:
    """The two hooks of one block; holds the norm2 input only between them (copies and pickles stay clean)."""

    def __init__(self, holder: nn.Module, name: str) -> None:
        self.holder, self.name = holder, name
        self.stash: torch.Tensor | None = None

    def save_input(self, module: nn.Module, args: tuple) -> None:
        self.stash = args[0]

    def add_output(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x, self.stash = self.stash, None
        return output + getattr(self.holder, self.name)(x)


def attach_residual_branch(block: nn.Module, adapter: nn.Module, holder: nn.Module, name: str) -> None:
    """Register ``adapter`` as ``holder.<name>`` and run it on ``block.norm2``'s input, added to the block output."""
    holder.add_module(name, adapter)
    branch = ResidualBranch(holder, name)
    block.norm2.register_forward_pre_hook(branch.save_input)
    add_block_hooks(block, post=branch.add_output)
