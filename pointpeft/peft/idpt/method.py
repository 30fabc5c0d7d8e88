"""IDPT: the prompt module reads the patch tokens entering one block (the last, by default) and its instance-specific
prompt token(s) are appended to that block's input.

Works for point transformers and timm ViTs alike: the EdgeConv runs on the patch tokens (the sequence without its
prefix tokens: CLS, and register tokens for ViTs), with kNN in feature space, so no point coordinates are needed.
The prompt is appended at the end of the sequence (attention is order-free; appended tokens get a zero position
embedding) and the framework's TokenContext strips it after the last block, so pooling never sees it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.attach import add_block_hooks
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.idpt.config import IdptConfig
from pointpeft.peft.idpt.layers import DynamicPromptModule


class PromptInserter(nn.Module):
    """Holds the prompt module at ``block.peft_prompt``; its pre-hook appends the prompt to the block's input."""

    def __init__(self, module: DynamicPromptModule, num_prefix_tokens: int) -> None:
        super().__init__()
        self.module = module
        self.num_prefix_tokens = num_prefix_tokens

    def insert(self, block: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if x.shape[1] - self.num_prefix_tokens < 1:
            raise ValueError(f"IDPT needs patch tokens after the {self.num_prefix_tokens} prefix token(s), got "
                             f"a sequence of {x.shape[1]}")
        prompt = self.module(x[:, self.num_prefix_tokens:])
        return (torch.cat([x, prompt.to(x.dtype)], dim=1), *args[1:])


class Idpt(PeftMethod):
    """Instance-aware Dynamic Prompt Tuning."""

    name = "idpt"
    config_class = IdptConfig
    adds_tokens = True
    zero_init_output = False  # the prompt token takes part in attention from the first step

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        if not -spec.depth <= cfg.prompt_layer < spec.depth:
            raise ConfigError(f"idpt prompt_layer={cfg.prompt_layer} is outside the {spec.depth} blocks of "
                              f"{type(model).__name__}")
        block = spec.blocks[cfg.prompt_layer]
        module = DynamicPromptModule(spec.embed_dim, cfg.k, cfg.num_edgeconv, cfg.num_prompts, cfg.activation)
        inserter = PromptInserter(module, int(getattr(model, "num_prefix_tokens", 1)))
        ref = block.norm1.weight  # the backbone's device and dtype
        block.add_module("peft_prompt", inserter.to(ref.device, ref.dtype))
        add_block_hooks(block, pre=inserter.insert)
