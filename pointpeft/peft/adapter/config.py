"""Adapter (Houlsby-style, sequential after the FFN) and AdaptFormer (parallel, scaled, beside the FFN) options.

``x_mode: true`` turns either into its "-X" variant (Adapter-X / AdaptFormer-X): the per-block adapter is replaced
by the shared SMoA + block norm + prompt generator of :mod:`pointpeft.peft.adapterx`, configured by the nested
``x:`` mapping (keys of :class:`~pointpeft.peft.adapterx.config.XOptions`; ``scale``, ``dropout`` and the position
default to this method's own values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pointpeft.peft.adapterx.config import XOptions, build_x_options
from pointpeft.peft.base import PeftConfig

LAYERNORM_OPTIONS = ("none", "in", "out")
ACTIVATIONS = ("gelu", "relu")
ATTACH_OPTIONS = ("residual", "ffn_input")


@dataclass
class AdapterConfig(PeftConfig):
    """``type: adapter``: a bottleneck after every FFN, ``y = ffn(x) + adapter(ffn(x))``."""

    r: int = 8  # bottleneck width (8 on ViT-B/16 = 0.16M params, the VTAB-1k tables' setting)
    dropout: float = 0.0  # dropout on the bottleneck activations
    scale: float = 1.0  # the adapter output is multiplied by this
    learnable_scale: bool = False  # true makes the scale a trained scalar starting at ``scale``
    layernorm: str = "none"  # none | in (LayerNorm before the down projection) | out (after the up projection)
    activation: str = "gelu"  # gelu | relu
    x_mode: bool = False  # the "-X" plug-in: shared SMoA + block norm + prompt generator instead of the adapter
    x: dict[str, Any] = field(default_factory=dict)  # XOptions overrides used when x_mode is true

    def validate(self) -> None:
        self.require_positive_int("r")
        self.require_probability("dropout")
        self.require_choice("layernorm", LAYERNORM_OPTIONS)
        self.require_choice("activation", ACTIVATIONS)
        if not isinstance(self.x, dict):
            raise ValueError(f"x must be a mapping of Adapter-X options, got {type(self.x).__name__}")
        if self.x and not self.x_mode:
            raise ValueError(f"x options {sorted(self.x)} are given but x_mode is false")
        self.x_options("sequential")  # validates the x: node (unknown keys, values)

    def x_options(self, position: str) -> XOptions:
        """The SMoA options of the -X variant: this method's scale/dropout/position under the ``x:`` overrides."""
        return build_x_options(self.x, {"scale": self.scale, "dropout": self.dropout, "position": position})


@dataclass
class AdaptFormerConfig(AdapterConfig):
    """``type: adaptformer``: a scaled bottleneck beside every FFN on the residual stream,
    ``y = h + drop_path(ffn(norm2(h))) + s * adapter(h)`` (ShoufaChen/AdaptFormer ``custom_modules.py``).

    AdaptFormer's scripts use r=64 (``--ffn_num``); the VTAB-1k tables (0.16M params on ViT-B) use r=8, the default
    here so that every method is compared at that budget.
    """

    scale: float = 0.1  # AdaptFormer's fixed scale s
    activation: str = "relu"  # AdaptFormer uses ReLU
    dropout: float = 0.1  # AdaptFormer builds its adapter with dropout=0.1 (after the ReLU)
    attach: str = "residual"  # residual (AdaptFormer: the FFN's pre-norm input) | ffn_input (norm2's output)

    def validate(self) -> None:
        super().validate()
        self.require_choice("attach", ATTACH_OPTIONS)
