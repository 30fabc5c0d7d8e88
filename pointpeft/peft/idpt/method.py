"""IDPT: the prompt module reads the patch tokens entering one block (the last, by default) and its
instance-specific prompt token(s) join that block's input with a position of their own (``prompt_pos``).

Point transformers add the position embedding before every block; the prompt module runs in a token hook of the
encoder (:meth:`pointpeft.models.transformer.TransformerEncoder.register_token_hook`), so it reads the tokens
*before* the position embedding is added, as the official code does (``y = x[:, -G:]`` of block 10's output), and
``prompt_pos`` is appended to the positions. timm ViTs add their position embedding once, before the blocks: there
a block pre-hook reads the block input and adds ``prompt_pos`` to the prompt. The EdgeConv runs on the patch tokens
(without CLS / register tokens), kNN in feature space. The prompt is appended at the end of the sequence (the
official code inserts it after CLS; attention is order-free); when ``pool`` reads it, it stays to the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.models.transformer import TransformerEncoder
from pointpeft.peft.attach import add_block_hooks
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.idpt.config import ORIGINAL_POOL, IdptConfig
from pointpeft.peft.idpt.layers import DynamicPromptModule
from pointpeft.peft.token_layout import apply_pool


class PromptInserter(nn.Module):
    """Holds the prompt module (at ``block.peft_prompt``) and the prompt's position ``prompt_pos`` (1, 1, D): a
    parameter when it trains, else a fixed buffer (saved with the adapter all the same)."""

    def __init__(self, module: DynamicPromptModule, num_prefix_tokens: int, train_pos: bool = False) -> None:
        super().__init__()
        self.module = module
        self.num_prefix_tokens = num_prefix_tokens
        pos = nn.init.trunc_normal_(torch.empty(1, 1, module.fuse.out_features), std=0.02)
        if train_pos:
            self.prompt_pos = nn.Parameter(pos)
        else:
            self.register_buffer("prompt_pos", pos)

    def prompts(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] - self.num_prefix_tokens < 1:
            raise ValueError(f"IDPT needs patch tokens after the {self.num_prefix_tokens} prefix token(s), got "
                             f"a sequence of {x.shape[1]}")
        return self.module(x[:, self.num_prefix_tokens:]).to(x.dtype)

    def token_hook(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder token hook: the prompt from the tokens before the position embedding, with its own position."""
        prompt = self.prompts(x)
        prompt_pos = self.prompt_pos.to(pos.dtype).expand(x.shape[0], prompt.shape[1], -1)
        return torch.cat([x, prompt], dim=1), torch.cat([pos[:, : x.shape[1]], prompt_pos], dim=1)

    def insert(self, block: nn.Module, args: tuple) -> tuple:
        """Block pre-hook (backbones whose tokens carry their position already): append prompt + prompt_pos."""
        x = args[0]
        prompt = self.prompts(x) + self.prompt_pos.to(x.dtype)
        return (torch.cat([x, prompt], dim=1), *args[1:])


class Idpt(PeftMethod):
    """Instance-aware Dynamic Prompt Tuning."""

    name = "idpt"
    config_class = IdptConfig
    adds_tokens = True
    zero_init_output = False  # the prompt token takes part in attention from the first step

    def _pool(self, model: nn.Module) -> list[str] | None:
        if self.config.pool is not None:
            return list(self.config.pool)
        return list(ORIGINAL_POOL) if hasattr(model, "set_pool") else None

    @property
    def keeps_tokens(self) -> bool:
        """The head pools the prompt (decided at injection: timm ViTs keep their own pooling)."""
        pool = getattr(self, "_applied_pool", self.config.pool or ORIGINAL_POOL) or ()
        return any(name.startswith("prompt") for name in pool)

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        if not -spec.depth <= cfg.prompt_layer < spec.depth:
            raise ConfigError(f"idpt prompt_layer={cfg.prompt_layer} is outside the {spec.depth} blocks of "
                              f"{type(model).__name__}")
        self._applied_pool = self._pool(model)
        apply_pool(model, self._applied_pool, self.name, cfg.train_head)
        block = spec.blocks[cfg.prompt_layer]
        module = DynamicPromptModule(spec.embed_dim, cfg.k, cfg.num_edgeconv, cfg.num_prompts, cfg.activation)
        inserter = PromptInserter(module, int(getattr(model, "num_prefix_tokens", 1)), cfg.train_prompt_pos)
        ref = block.norm1.weight  # the backbone's device and dtype
        block.add_module("peft_prompt", inserter.to(ref.device, ref.dtype))
        encoder = getattr(model, "blocks", None)
        if isinstance(encoder, TransformerEncoder):
            encoder.register_token_hook(cfg.prompt_layer, inserter.token_hook)
        else:
            add_block_hooks(block, pre=inserter.insert)

    def state_modules(self, model: nn.Module, spec: Any) -> list[nn.Module]:
        """The fixed ``prompt_pos`` buffer travels with the adapter (it is random, not in the backbone file)."""
        return [] if self.config.train_prompt_pos else [spec.blocks[self.config.prompt_layer].peft_prompt]
