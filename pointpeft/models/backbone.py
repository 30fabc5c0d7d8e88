"""The backbone contract: where the pieces of a backbone are (blocks, their norms/attention/FFN, head, CLS token,
tokenizer) and how its pretrained weights are read.

PEFT methods only talk to a :class:`BackboneSpec`, so the same method code serves Point-MAE/Point-BERT point
transformers and timm Vision Transformers (their block module names are the same: norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2). Each family registers its spec next to its model (``point_transformer.py``,
``vit.py``) with :func:`register_backbone`; a new family is one more registration there, nothing in ``peft/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pointpeft.errors import ConfigError

#: ``load_weights(model, path) -> LoadReport``: reads a pretrained file into a model of the family
WeightLoader = Callable[[nn.Module, "str | os.PathLike"], Any]


@dataclass
class BackboneSpec:
    """One model's parts, as PEFT methods see them; built by the family's describer on every call."""

    model: nn.Module
    family: str  # "point_transformer" | "timm_vit" | a registered family's name
    blocks: list[nn.Module]
    embed_dim: int
    num_heads: int
    head_modules: list[nn.Module | nn.Parameter]
    prefix_params: list[nn.Parameter]  # CLS token (+ its position for point transformers)
    final_norm: nn.Module | None
    load_weights: WeightLoader  # what ``--ckpt`` runs for this family (pointpeft.models.load_backbone_weights)
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


Describer = Callable[[nn.Module], BackboneSpec]
_DESCRIBERS: list[tuple[str, Callable[[nn.Module], bool], Describer]] = []


def register_backbone(family: str, matches: Callable[[nn.Module], bool]) -> Callable[[Describer], Describer]:
    """Register the function that builds the spec of models of ``family`` (those for which ``matches(model)``)."""

    def deco(fn: Describer) -> Describer:
        if any(name == family for name, _, _ in _DESCRIBERS):
            raise ValueError(f"backbone family {family!r} is already registered")
        _DESCRIBERS.append((family, matches, fn))
        return fn

    return deco


def backbone_families() -> list[str]:
    return [name for name, _, _ in _DESCRIBERS]


def describe_backbone(model: nn.Module) -> BackboneSpec:
    """The spec of ``model``; ConfigError naming the registered families when none matches."""
    for _, matches, fn in _DESCRIBERS:
        if matches(model):
            return fn(model)
    raise ConfigError(f"pointpeft does not know where the blocks of {type(model).__name__} are; registered backbone "
                      f"families: {backbone_families()} (pointpeft.models.register_backbone adds one)")
