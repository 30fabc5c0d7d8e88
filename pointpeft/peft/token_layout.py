"""Backbone token-layout options a PEFT method may set: what the head pools, and where the position embedding goes.

Both are options of the point transformer (``PointTransformer.set_pool`` / ``set_pos_every_block``); a method
asks for them here, so the same call refuses clearly on backbones without the option (timm ViTs keep their own
pooling and add their position embedding once anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pointpeft.errors import ConfigError


def apply_pool(model: nn.Module, pool: Sequence[str] | None, method: str, train_head: bool) -> None:
    """Make ``model``'s head pool ``pool`` (None: leave it). A head whose input width changes is new and random,
    so it must train."""
    if pool is None:
        return
    if not hasattr(model, "set_pool"):
        raise ConfigError(f"{method} pool={list(pool)}: {type(model).__name__} has no pooling option (point "
                          "transformers have; timm ViTs keep their own pooling); leave pool null")
    if model.set_pool(pool) and not train_head:
        raise ConfigError(f"{method} pool={list(pool)} changes the head's input width, so the new head must train "
                          "(train_head: true)")


def apply_pos_embed(model: nn.Module, every_block: bool) -> None:
    """Position embedding before every block (Point-MAE) or once (DAPT). Backbones without the option (timm ViTs)
    add it once, before the blocks, already; for them only ``every_block=False`` is meaningful and is a no-op."""
    if hasattr(model, "set_pos_every_block"):
        model.set_pos_every_block(every_block)
    elif every_block:
        raise ConfigError(f"{type(model).__name__} adds its position embedding once; it has no every-block option")
