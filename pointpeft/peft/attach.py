"""Attaching PEFT modules without renaming a single backbone weight.

Methods add their modules as children of the backbone module they act on (``blocks.3.mlp.peft_adapter``,
``blocks.3.attn.qkv.lora``) and add a forward hook that routes data through them. The backbone's own state-dict keys
stay the official ones, so checkpoints load before or after injection and merging is a plain weight update.

Prompt methods append tokens at the END of the sequence inside the blocks. A small :class:`TokenContext` records how
many tokens the backbone itself made (at the first block) and strips the extra ones after the last block, so the
final norm, pooling and head never see prompts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _parallel_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.peft_adapter(args[0])


def _sequential_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.peft_adapter(output)


_HOOKS = {"parallel": _parallel_hook, "sequential": _sequential_hook}


def attach_adapter(target: nn.Module, adapter: nn.Module, position: str = "parallel") -> None:
    """Run ``adapter`` beside ``target``: ``parallel`` adds adapter(input), ``sequential`` adds adapter(output)."""
    if position not in _HOOKS:
        raise ValueError(f"adapter position must be one of {sorted(_HOOKS)}, got {position!r}")
    if hasattr(target, "peft_adapter"):
        raise ValueError(f"{type(target).__name__} already carries a PEFT adapter")
    target.add_module("peft_adapter", adapter)
    handle = target.register_forward_hook(_HOOKS[position])
    target._peft_handles = [*getattr(target, "_peft_handles", []), handle]  # type: ignore[attr-defined]


def detach_adapter(target: nn.Module) -> nn.Module:
    """Remove the hooks and the adapter child; returns the adapter (for merging)."""
    for h in getattr(target, "_peft_handles", []):
        h.remove()
    target._peft_handles = []  # type: ignore[attr-defined]
    adapter = target.peft_adapter
    del target.peft_adapter
    return adapter


class TokenContext:
    """Shared by the blocks of one model: how many tokens the backbone made before any prompt was added."""

    def __init__(self) -> None:
        self.num_base_tokens = 0

    def record(self, module: nn.Module, args: tuple) -> None:
        self.num_base_tokens = args[0].shape[1]

    def strip(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output[:, : self.num_base_tokens]


def install_token_context(blocks: list[nn.Module]) -> TokenContext:
    """Record the base token count at the first block (runs before other pre-hooks)."""
    ctx = TokenContext()
    blocks[0].register_forward_pre_hook(ctx.record, prepend=True)
    return ctx


def finish_token_context(blocks: list[nn.Module], ctx: TokenContext) -> None:
    """Strip prompt tokens after the last block (registered last, so it runs after the methods' hooks)."""
    blocks[-1].register_forward_hook(ctx.strip)


def add_block_hooks(block: nn.Module, pre: Any = None, post: Any = None) -> None:
    """Pre-hook ``pre(block, args) -> args | None`` and post-hook ``post(block, args, out) -> out | None``."""
    if pre is not None:
        block.register_forward_pre_hook(pre)
    if post is not None:
        block.register_forward_hook(post)
