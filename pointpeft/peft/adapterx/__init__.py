"""Adapter-X: a Sparse Mixture of Adapters shared by all blocks, per-block prompt generators and block norms.

Public API: :class:`AdapterXConfig` / :class:`XOptions` (options), :class:`SMoA`, :class:`SMoABlock`,
:class:`ExpertPool`, :class:`CosineRouter`, :class:`PromptGenerator` (layers), :func:`attach_smoa` /
:func:`build_smoa_pool` / :func:`build_x_options` / :func:`x_trainable_modules` (the "-X" plug-in for other methods),
:func:`routing_choices`, :func:`expert_usage`, :func:`reset_expert_usage` (routing read-out).
"""

from pointpeft.peft.adapterx.config import PRESETS, AdapterXConfig, XOptions, build_x_options
from pointpeft.peft.adapterx.layers import (
    CosineRouter,
    ExpertPool,
    PromptGenerator,
    SMoA,
    SMoABlock,
    SMoAOutput,
    switch_balance_loss,
)
from pointpeft.peft.adapterx.method import (
    SMOA_ATTR,
    AdapterX,
    attach_smoa,
    build_smoa_pool,
    expert_usage,
    reset_expert_usage,
    routing_choices,
    smoa_blocks,
    x_adds_tokens,
    x_trainable_modules,
)
from pointpeft.peft.base import register_method

__all__ = [
    "PRESETS", "SMOA_ATTR", "AdapterX", "AdapterXConfig", "CosineRouter", "ExpertPool", "PromptGenerator", "SMoA",
    "SMoABlock", "SMoAOutput", "XOptions", "attach_smoa", "build_smoa_pool", "build_x_options", "expert_usage",
    "reset_expert_usage", "routing_choices", "smoa_blocks", "switch_balance_loss", "x_adds_tokens",
    "x_trainable_modules",
]

register_method(AdapterX)
