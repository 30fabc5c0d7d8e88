"""Where the pieces are in each backbone family: blocks, their norms/attention/FFN, head, CLS token, tokenizer.

PEFT methods only talk to a :class:`BackboneSpec`, so the same method code serves Point-MAE/Point-BERT point
transformers and timm Vision Transformers (their block module names are the same: norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from pointpeft.errors import ConfigError


@dataclass
class BackboneSpec:
    model: nn.Module
    family: str  # "point_transformer" | "timm_vit"
    blocks: list[nn.Module]
    embed_dim: int
    num_heads: int
    head_modules: list[nn.Module | nn.Parameter]
    prefix_params: list[nn.Parameter]  # CLS token (+ its position for point transformers)
    final_norm: nn.Module | None
    tokenizer_modules: list[nn.Module] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def lookup(self, name: str) -> nn.Module | nn.Parameter:
        """A submodule or parameter by dotted name; ConfigError when it does not exist."""
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            pass
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            raise ConfigError(f"modules_to_save: {name!r} is neither a module nor a parameter of the model") from None

    def describe(self) -> dict:
        """What an adapter file records about its base model (checked when loading)."""
        return {
            "family": self.family,
            "class": type(self.model).__name__,
            "arch": getattr(self.model, "arch_name", None),
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "num_classes": getattr(self.model, "num_classes", None),
        }


_DESCRIBERS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module], BackboneSpec]]] = []


def register_backbone(matches: Callable[[nn.Module], bool]):
    """Register a function that builds the spec of models for which ``matches(model)`` is true."""

    def deco(fn: Callable[[nn.Module], BackboneSpec]) -> Callable[[nn.Module], BackboneSpec]:
        _DESCRIBERS.append((matches, fn))
        return fn

    return deco


def describe_backbone(model: nn.Module) -> BackboneSpec:
    for matches, fn in _DESCRIBERS:
        if matches(model):
            return fn(model)
    raise ConfigError(
        f"pointpeft does not know where the blocks of {type(model).__name__} are; supported: point transformers "
        "(pointpeft.models.build_point_transformer) and timm VisionTransformer models"
    )


def _is_point_transformer(model: nn.Module) -> bool:
    from pointpeft.models.point_transformer import PointTransformer

    return isinstance(model, PointTransformer)


@register_backbone(_is_point_transformer)
def _point_transformer_spec(model: nn.Module) -> BackboneSpec:
    tok = [model.encoder, model.pos_embed] + ([model.reduce_dim] if hasattr(model, "reduce_dim") else [])
    return BackboneSpec(
        model=model,
        family="point_transformer",
        blocks=list(model.blocks.blocks),
        embed_dim=model.trans_dim,
        num_heads=model.cfg.num_heads,
        head_modules=[model.cls_head_finetune],
        prefix_params=[model.cls_token, model.cls_pos],
        final_norm=model.norm,
        tokenizer_modules=tok,
    )


def _is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformer)


@register_backbone(_is_timm_vit)
def _timm_vit_spec(model: nn.Module) -> BackboneSpec:
    heads: list[nn.Module | nn.Parameter] = [model.head]
    if not isinstance(model.fc_norm, nn.Identity):
        heads.append(model.fc_norm)
    prefix = [p for p in (getattr(model, "cls_token", None), getattr(model, "reg_token", None)) if p is not None]
    return BackboneSpec(
        model=model,
        family="timm_vit",
        blocks=list(model.blocks),
        embed_dim=model.embed_dim,
        num_heads=model.blocks[0].attn.num_heads,
        head_modules=heads,
        prefix_params=prefix,
        final_norm=model.norm,
        tokenizer_modules=[model.patch_embed],
    )
