"""DAPT: a dynamic adapter beside every FFN, SSF scale/shift around the frozen layers, internal prompts.

Layout against the official ``PointTransformer_DAPT`` (LMD0311/DAPT ``models/DAPT.py``): the position embedding is
added once, before block 0 (``pos_embed: once``); the tokenizer output is scaled/shifted by a tokenizer hook, which
runs after the frozen tokenizer's ``no_grad`` so its SSF trains. Every block makes an internal prompt from its
adapter output and appends it at the END of the sequence, where the official code inserts it right after CLS:
attention is order-free and, with the position embedding added once, prompts get no position in either layout, so
the two compute the same. Prompts accumulate (block i sees i prompts). When ``pool`` reads them (``prompt_mean``)
they stay through the final norm to the head; otherwise they are stripped after the last block.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pointpeft.peft.adapterx.method import ExpertUsageRecords, attach_smoa, x_trainable_modules
from pointpeft.peft.attach import add_block_hooks, attach_adapter
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.dapt.config import DaptConfig
from pointpeft.peft.dapt.layers import DynamicAdapter, Ssf
from pointpeft.peft.token_layout import apply_pool, apply_pos_embed

#: block children scaled/shifted by SSF (the same names in point transformers and timm ViTs)
SSF_TARGETS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
SSF_ATTR = "peft_ssf"
TOKEN_SSF_ATTR = "peft_token_ssf"


def attach_ssf(module: nn.Module, dim: int, init: str = "normal") -> Ssf:
    """An :class:`Ssf` at ``module.peft_ssf`` applied to the module's output by a forward hook."""
    if hasattr(module, SSF_ATTR):
        raise ValueError(f"{type(module).__name__} already carries an SSF scale/shift")
    ref = next(module.parameters())
    ssf = Ssf(dim, init).to(ref.device, ref.dtype)
    module.add_module(SSF_ATTR, ssf)
    module.register_forward_hook(ssf.hook)
    return ssf


def attach_token_ssf(model: nn.Module, spec: Any, init: str = "normal") -> Ssf:
    """SSF on the tokenizer output (DAPT's ``tfts_gamma_1`` on the encoder tokens), at ``model.peft_token_ssf``.

    Point transformers: a tokenizer hook (after the no_grad tokenizer, so it trains); timm ViTs: a forward hook on
    the patch embedding (which runs with gradients)."""
    ref = spec.blocks[0].norm1.weight
    ssf = Ssf(spec.embed_dim, init).to(ref.device, ref.dtype)
    model.add_module(TOKEN_SSF_ATTR, ssf)
    if hasattr(model, "register_tokenizer_hook"):
        model.register_tokenizer_hook(ssf.tokenizer_hook)
    else:
        spec.tokenizer_modules[0].register_forward_hook(ssf.hook)
    return ssf


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.normalized_shape[-1]


class Dapt(ExpertUsageRecords, PeftMethod):
    """Dynamic Adapter + Prompt Tuning (DAPT), or DAPT-X with ``x_mode: true``."""

    name = "dapt"
    config_class = DaptConfig

    @property
    def adds_tokens(self) -> bool:
        return self.config.makes_prompts

    @property
    def keeps_tokens(self) -> bool:
        return self.config.reads_prompts

    @property
    def zero_init_output(self) -> bool:
        """Up projections start at zero; only prompt tokens and a random SSF init change the output at first."""
        cfg = self.config
        return not self.adds_tokens and not (cfg.use_ssf and cfg.ssf_init == "normal") and cfg.pool is None \
            and cfg.pos_embed == "every_block"

    @property
    def trains_backbone(self) -> tuple[str, ...]:
        cfg = self.config
        return ("norm2.weight", "norm2.bias") if cfg.x_mode and cfg.x_options().train_block_norm else ()

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        apply_pos_embed(model, cfg.pos_embed == "every_block")
        apply_pool(model, cfg.pool, self.name, cfg.train_head)
        if cfg.use_ssf:
            attach_token_ssf(model, spec, cfg.ssf_init)
            for block in spec.blocks:
                for name in SSF_TARGETS:
                    target = block.get_submodule(name)
                    attach_ssf(target, _out_features(target), cfg.ssf_init)
            if spec.final_norm is not None:
                attach_ssf(spec.final_norm, spec.embed_dim, cfg.ssf_init)
        if cfg.x_mode:
            attach_smoa(model, spec, cfg.x_options(), last_block_prompt=cfg.reads_prompts)
            return
        for block in spec.blocks:
            adapter = DynamicAdapter(spec.embed_dim, cfg.r, cfg.dropout, prompt=cfg.prompt, prompt_init=cfg.ssf_init)
            ref = block.mlp.fc1.weight  # the backbone's device and dtype
            attach_adapter(block.mlp, adapter.to(ref.device, ref.dtype), "parallel")
            if cfg.prompt:
                add_block_hooks(block, post=adapter.append_prompt)

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module | nn.Parameter]:
        parts = super().trainable_modules(model, spec)
        return parts + (x_trainable_modules(spec, self.config.x_options()) if self.config.x_mode else [])
