"""VPT-deep: prompt tokens in every block (appended at the end of the sequence; attention is order-free, so this
equals VPT's insertion after CLS). The framework's TokenContext strips the last block's prompts before the final norm.
On point transformers the prompts carry learnable positions by default (IDPT's point VPT-deep baseline: the block
input is ``cat(x + pos, prompt + prompt_pos)``); ViTs have none (KMnP/vpt). A block pre-hook appends them."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from pointpeft.peft.attach import add_block_hooks
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.vpt.config import VptDeepConfig
from pointpeft.peft.vpt.layers import BlockPrompts


def _patch_area(model: nn.Module) -> int | None:
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if size is None:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return int(math.prod(size))


class VptDeep(PeftMethod):
    name = "vpt_deep"
    config_class = VptDeepConfig
    adds_tokens = True
    zero_init_output = False  # prompts take part in attention from the first step

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        init = cfg.init
        area = _patch_area(model)
        if init == "auto":
            init = "uniform" if area is not None else "trunc_normal"
        with_pos = spec.family == "point_transformer" if cfg.prompt_pos is None else cfg.prompt_pos
        for i, block in enumerate(spec.blocks):
            prompts = BlockPrompts(cfg.num_prompts, spec.embed_dim, replaces_previous=i > 0, dropout=cfg.dropout,
                                   prompt_pos=with_pos)
            if init == "uniform":
                # VPT: uniform(-v, v), v = sqrt(6 / (3 * patch_area + dim)) (Xavier over the patch projection)
                v = math.sqrt(6.0 / (3 * (area or 1) + spec.embed_dim))
                nn.init.uniform_(prompts.prompts, -v, v)
            else:
                nn.init.trunc_normal_(prompts.prompts, std=cfg.init_std)
            ref = block.norm1.weight  # the backbone's device and dtype
            block.add_module("peft_prompts", prompts.to(ref.device, ref.dtype))
            add_block_hooks(block, pre=prompts.insert)
