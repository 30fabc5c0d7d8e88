"""Adapter and AdaptFormer: one bottleneck per block at the FFN, or (``x_mode``) the shared Adapter-X SMoA."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pointpeft.peft.adapter.config import AdapterConfig, AdaptFormerConfig
from pointpeft.peft.adapter.layers import Bottleneck
from pointpeft.peft.adapter.placement import attach_residual_branch
from pointpeft.peft.adapterx.method import ExpertUsageRecords, attach_smoa, x_trainable_modules
from pointpeft.peft.attach import attach_adapter
from pointpeft.peft.base import PeftMethod


class Adapter(ExpertUsageRecords, PeftMethod):
    """Houlsby-style adapter after the FFN (sequential): ``y = ffn(x) + adapter(ffn(x))``."""

    name = "adapter"
    config_class = AdapterConfig
    #: where the adapter sits relative to the block's FFN (see pointpeft.peft.attach.attach_adapter)
    position: ClassVar[str] = "sequential"

    @property
    def x_options(self):
        return self.config.x_options(self.position)

    @property
    def adds_tokens(self) -> bool:
        return bool(self.config.x_mode and self.x_options.prompt_generator)

    @property
    def zero_init_output(self) -> bool:
        """Up projections start at zero; only the -X variant's prompt tokens change the output at init."""
        return not self.adds_tokens

    @property
    def trains_backbone(self) -> tuple[str, ...]:
        return ("norm2.weight", "norm2.bias") if self.config.x_mode and self.x_options.train_block_norm else ()

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        if cfg.x_mode:
            attach_smoa(model, spec, self.x_options)
            return
        for block in spec.blocks:
            adapter = Bottleneck(spec.embed_dim, cfg.r, cfg.dropout, cfg.scale, cfg.learnable_scale, cfg.layernorm,
                                 cfg.activation)
            ref = block.mlp.fc1.weight  # the backbone's device and dtype
            self._join_block(block, adapter.to(ref.device, ref.dtype))

    def _join_block(self, block: nn.Module, adapter: nn.Module) -> None:
        """Attach one block's adapter at ``position`` relative to its FFN."""
        attach_adapter(block.mlp, adapter, self.position)

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module | nn.Parameter]:
        parts = super().trainable_modules(model, spec)
        return parts + (x_trainable_modules(spec, self.x_options) if self.config.x_mode else [])


class AdaptFormer(Adapter):
    """AdaptFormer: a scaled bottleneck in parallel with the FFN, reading the residual stream (``attach: residual``)
    or the FFN's normed input (``attach: ffn_input``); the -X variant's SMoA sits beside the FFN on its input."""

    name = "adaptformer"
    config_class = AdaptFormerConfig
    position = "parallel"

    def _join_block(self, block: nn.Module, adapter: nn.Module) -> None:
        """``attach: residual``: AdaptFormer's placement (the residual stream, added outside the FFN's drop path)."""
        if self.config.attach == "residual":
            attach_residual_branch(block, adapter, block.mlp, "peft_adapter")
        else:
            super()._join_block(block, adapter)
