"""Adapter-X: how the shared SMoA, the prompt generators and the block norms are put into a backbone.

:func:`attach_smoa` is the whole "-X" plug-in (used by ``adapterx``, ``adapter``/``adaptformer`` with
``x_mode: true`` and DAPT-X): one :class:`SMoA` at ``model.peft_smoa``, one :class:`SMoABlock` per block at
``block.mlp.peft_adapter`` (parallel: beside the FFN on norm2's output; sequential: on the FFN's output), and a block
forward hook that appends the block's prompt token. Prompt generators sit on blocks 0..L-2 only: the last block's
prompt would be stripped before the final norm anyway (the framework's TokenContext removes every appended token
after the last block), so it could never influence anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.peft.adapterx.config import AdapterXConfig, XOptions
from pointpeft.peft.adapterx.layers import SMoA, SMoABlock
from pointpeft.peft.attach import add_block_hooks, attach_adapter
from pointpeft.peft.base import PeftMethod
from pointpeft.utils.modules import unwrap

SMOA_ATTR = "peft_smoa"


def build_smoa_pool(embed_dim: int, opts: XOptions, family: str = "timm_vit") -> SMoA:
    """A shared SMoA for a backbone of width ``embed_dim`` (presets resolved for ``family``)."""
    return SMoA(embed_dim, opts.resolved(family, embed_dim))


def attach_smoa(model: nn.Module, spec: Any, opts: XOptions, position: str | None = None,
                target: str = "mlp", last_block_prompt: bool = False) -> list[SMoABlock]:
    """Install the shared SMoA (+ prompt generators) into every block; returns the per-block handles.

    ``position`` overrides ``opts.position``; ``target`` is the block child the SMoA runs beside (the FFN);
    ``last_block_prompt`` gives the last block a prompt generator too (for a head that pools the prompts: DAPT-X).
    The caller's ``trainable_modules`` should add :func:`x_trainable_modules` (the block norms).
    """
    if hasattr(model, SMOA_ATTR):
        raise ValueError(f"{type(model).__name__} already has a shared SMoA at .{SMOA_ATTR}")
    resolved = opts.resolved(spec.family, spec.embed_dim)
    ref = spec.blocks[0].norm2.weight  # new modules take the backbone's device and dtype
    pool = SMoA(spec.embed_dim, resolved).to(ref.device, ref.dtype)
    model.add_module(SMOA_ATTR, pool)
    handles = []
    for i, block in enumerate(spec.blocks):
        handle = SMoABlock(pool, i, resolved,
                           prompt=resolved.prompt_generator and (last_block_prompt or i < spec.depth - 1))
        handle.to(ref.device, ref.dtype)
        attach_adapter(getattr(block, target), handle, position or resolved.position)
        if handle.prompt_generator is not None:
            add_block_hooks(block, post=handle.append_prompt)
        handles.append(handle)
    return handles


def x_adds_tokens(opts: XOptions) -> bool:
    return bool(opts.prompt_generator)


def x_trainable_modules(spec: Any, opts: XOptions) -> list[nn.Module]:
    """The block-specific norm: every block's norm2 (the FFN's input norm) when ``train_block_norm``."""
    return [block.norm2 for block in spec.blocks] if opts.train_block_norm else []


class ExpertUsageRecords:
    """The evaluation extension points of every method that may carry an SMoA (Adapter-X and the ``x_mode``
    variants): each evaluation counts expert usage from zero and records it as ``expert_usage`` (per block, the
    fraction of sub-tokens each expert took); TensorBoard gets one scalar per block and expert."""

    def start_evaluation(self, model: nn.Module) -> None:
        if _has_smoa(model):
            reset_expert_usage(model)

    def evaluation_records(self, model: nn.Module) -> dict[str, Any]:
        return {"expert_usage": expert_usage(model).tolist()} if _has_smoa(model) else {}

    def record_scalars(self, records: Mapping[str, Any]) -> dict[str, float]:
        usage = records.get("expert_usage") or []
        return {f"experts/block{b}/expert{e}": float(frac)
                for b, row in enumerate(usage) for e, frac in enumerate(row)}


def _has_smoa(model: nn.Module) -> bool:
    return any(isinstance(m, SMoABlock) for m in unwrap(model).modules())


class AdapterX(ExpertUsageRecords, PeftMethod):
    """Adapter-X: shared SMoA beside every FFN, a prompt generator per block, trainable block norm2."""

    name = "adapterx"
    config_class = AdapterXConfig
    @property
    def trains_backbone(self) -> tuple[str, ...]:
        """Backbone parameters (beyond head and CLS) this method trains, as dotted-name suffixes."""
        return ("norm2.weight", "norm2.bias") if self.config.train_block_norm else ()

    @property
    def adds_tokens(self) -> bool:
        return x_adds_tokens(self.config)

    @property
    def zero_init_output(self) -> bool:
        """Experts are zero-initialised, but an appended prompt token (even a zero one) changes attention."""
        return not self.config.prompt_generator

    def inject(self, model: nn.Module, spec: Any) -> None:
        attach_smoa(model, spec, self.config.x_options())

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module | nn.Parameter]:
        return super().trainable_modules(model, spec) + x_trainable_modules(spec, self.config)


# -- expert usage read-out -----------------------------------------------------------------------------------------
def smoa_blocks(model: nn.Module) -> list[SMoABlock]:
    """The per-block SMoA handles of a model, in block order; ValueError when the model has none."""
    found = sorted((m for m in unwrap(model).modules() if isinstance(m, SMoABlock)), key=lambda m: m.block_index)
    if not found:
        raise ValueError(f"{type(unwrap(model)).__name__} has no SMoA (apply adapterx or an x_mode method first)")
    return found


def routing_choices(model: nn.Module) -> dict[int, torch.Tensor]:
    """Block index -> LongTensor (B, T, heads): the expert chosen for every sub-token in the last forward.

    T counts the tokens the block saw, prompt tokens of earlier blocks included. Blocks not run yet are absent.
    """
    return {b.block_index: b.last_choice for b in smoa_blocks(model) if b.last_choice is not None}


def expert_usage(model: nn.Module, since_reset: bool = True) -> torch.Tensor:
    """(num_blocks, num_experts): fraction of sub-tokens routed to each expert per block.

    ``since_reset`` (default) accumulates over every forward since :func:`reset_expert_usage` (or injection);
    False uses the last forward only. Rows of blocks that have not run are zero; the others sum to 1.
    """
    rows = []
    for b in smoa_blocks(model):
        if since_reset:
            counts = b.usage_counts.float()
        elif b.last_choice is not None:
            counts = torch.bincount(b.last_choice.reshape(-1), minlength=b.pool.num_experts).float()
        else:
            counts = torch.zeros(b.pool.num_experts)
        rows.append(counts.cpu() / counts.sum().clamp(min=1).cpu())
    return torch.stack(rows)


def reset_expert_usage(model: nn.Module) -> None:
    """Start a new usage count (e.g. before evaluating on a test set)."""
    for b in smoa_blocks(model):
        b.reset_usage()
