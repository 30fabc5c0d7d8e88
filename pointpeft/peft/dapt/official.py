"""Official DAPT checkpoints (LMD0311/DAPT ``PointTransformer_DAPT``) into a DAPT-injected point transformer.

DAPT stores its SSF factors as ``tfts_gamma_k`` / ``tfts_beta_k`` on the module they follow and its adapter as
``Adapter_MLP``; here they live in the injected modules (``<module>.peft_ssf``, ``mlp.peft_adapter``). Use as
``load_pretrained(model, path, convert=official_state)`` after ``get_peft_model(model, {"type": "dapt", ...})``
with the checkpoint's settings (rank, pooling).
"""

from __future__ import annotations

import re

import torch
from torch import nn

#: (DAPT's name pattern, ours) after pointpeft.models.pretrained has dropped ``module.`` / ``base_model.``
_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(a), b) for a, b in [
    (r"^tfts_(gamma|beta)_1$", r"peft_token_ssf.\1"),  # the tokenizer output
    (r"^tfts_(gamma|beta)_2$", r"norm.peft_ssf.\1"),  # after the final norm
    (r"^(blocks\.blocks\.\d+)\.tfts_(gamma|beta)_1$", r"\1.norm1.peft_ssf.\2"),
    (r"^(blocks\.blocks\.\d+)\.tfts_(gamma|beta)_2$", r"\1.norm2.peft_ssf.\2"),
    (r"^(blocks\.blocks\.\d+)\.tfts_(gamma|beta)_3$", r"\1.mlp.peft_adapter.prompt_generator.\2"),
    (r"^(blocks\.blocks\.\d+)\.attn\.tfts_(gamma|beta)_1$", r"\1.attn.qkv.peft_ssf.\2"),
    (r"^(blocks\.blocks\.\d+)\.attn\.tfts_(gamma|beta)_2$", r"\1.attn.proj.peft_ssf.\2"),
    (r"^(blocks\.blocks\.\d+)\.mlp\.tfts_(gamma|beta)_1$", r"\1.mlp.fc1.peft_ssf.\2"),
    (r"^(blocks\.blocks\.\d+)\.mlp\.tfts_(gamma|beta)_2$", r"\1.mlp.fc2.peft_ssf.\2"),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.adapter_layer_norm_before\.", r"\1.mlp.peft_adapter.norm."),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.scale\.", r"\1.mlp.peft_adapter.scale."),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.down_proj\.", r"\1.mlp.peft_adapter.down."),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.up_proj\.", r"\1.mlp.peft_adapter.up."),
]]


def official_key(key: str) -> str:
    """Our name for a tensor of DAPT's ``PointTransformer_DAPT`` (backbone names are the same)."""
    for pattern, repl in _RULES:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return key


def official_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with DAPT's adapter and SSF names mapped to the injected modules of ``model``."""
    return {official_key(k): v for k, v in state.items()}
