"""DAPT: a dynamic adapter beside every FFN, SSF scale/shift around the frozen layers, internal prompts.

Internal prompts are appended at the END of the sequence by a forward hook of blocks 0..L-2 and accumulate (block i
sees i prompts, as in the official code, which inserts them after CLS; attention is order-free and appended tokens get
a zero position embedding). The framework's TokenContext strips them after the last block, so the final norm, the
pooling (CLS + max over patch tokens) and the head never see them. The last block makes no prompt: it would be
stripped unused.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pointpeft.peft.adapterx.method import attach_smoa, x_trainable_modules
from pointpeft.peft.attach import add_block_hooks, attach_adapter
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.dapt.config import DaptConfig
from pointpeft.peft.dapt.layers import DynamicAdapter, Ssf

#: block children scaled/shifted by SSF (the same names in point transformers and timm ViTs)
SSF_TARGETS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
SSF_ATTR = "peft_ssf"


def attach_ssf(module: nn.Module, dim: int) -> Ssf:
    """An :class:`Ssf` at ``module.peft_ssf`` applied to the module's output by a forward hook."""
    if hasattr(module, SSF_ATTR):
        raise ValueError(f"{type(module).__name__} already carries an SSF scale/shift")
    ref = next(module.parameters())
    ssf = Ssf(dim).to(ref.device, ref.dtype)
    module.add_module(SSF_ATTR, ssf)
    module.register_forward_hook(ssf.hook)
    return ssf


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.normalized_shape[-1]


class Dapt(PeftMethod):
    """Dynamic Adapter + Prompt Tuning (DAPT), or DAPT-X with ``x_mode: true``."""

    name = "dapt"
    config_class = DaptConfig

    @property
    def adds_tokens(self) -> bool:
        cfg = self.config
        return bool(cfg.x_options().prompt_generator) if cfg.x_mode else cfg.prompt

    @property
    def zero_init_output(self) -> bool:
        """Up projections start at zero and SSF at identity; only appended prompt tokens change the output at init."""
        return not self.adds_tokens

    @property
    def trains_backbone(self) -> tuple[str, ...]:
        cfg = self.config
        return ("norm2.weight", "norm2.bias") if cfg.x_mode and cfg.x_options().train_block_norm else ()

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        if cfg.use_ssf:
            for block in spec.blocks:
                for name in SSF_TARGETS:
                    target = block.get_submodule(name)
                    attach_ssf(target, _out_features(target))
            if spec.final_norm is not None:
                attach_ssf(spec.final_norm, spec.embed_dim)
        if cfg.x_mode:
            attach_smoa(model, spec, cfg.x_options())
            return
        for i, block in enumerate(spec.blocks):
            prompt = cfg.prompt and i < spec.depth - 1
            adapter = DynamicAdapter(spec.embed_dim, cfg.r, cfg.dropout, prompt=prompt)
            ref = block.mlp.fc1.weight  # the backbone's device and dtype
            attach_adapter(block.mlp, adapter.to(ref.device, ref.dtype), "parallel")
            if prompt:
                add_block_hooks(block, post=adapter.append_prompt)

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module | nn.Parameter]:
        parts = super().trainable_modules(model, spec)
        return parts + (x_trainable_modules(spec, self.config.x_options()) if self.config.x_mode else [])
