"""DAPT options: Dynamic Adapter beside the FFN, SSF scale/shift, internal prompts (Zhou et al., CVPR 2024).

Parameter budget of the defaults on Point-MAE (D=384, L=12, r=72; counted by scripts/param_table.py):

* dynamic adapter per block: LayerNorm 2D + scale Linear(D, 1) + down D*r + r + up r*D + D = 56,905;
* SSF per block (scale and shift, 2 vectors each): norm1 D, qkv 3D, proj D, norm2 D, fc1 4D, fc2 D = 2*11D = 8,448;
  internal prompt scale/shift 2D = 768 on blocks 0..L-2; one SSF after the final norm 2D = 768;
* 12 * (56,905 + 8,448) + 11 * 768 + 768 + CLS/cls_pos 768 + head 273,960 (40 classes) = 1,068,180 trainable.

The official code (1.1M with its 3-channel head option) also scales/shifts the tokenizer output; here the frozen
tokenizer runs under ``no_grad`` (pointpeft.models.point_transformer), so that SSF could never train and is left out.

``x_mode: true`` is DAPT-X: the dynamic adapter and internal prompt are replaced by the shared SMoA and its prompt
generators (:mod:`pointpeft.peft.adapterx`, GELU before the mean as DAPT's internal prompt), configured by ``x:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pointpeft.peft.adapterx.config import XOptions, build_x_options
from pointpeft.peft.base import PeftConfig


@dataclass
class DaptConfig(PeftConfig):
    """``type: dapt``: ``y = ffn(ssf(norm2(x))) + relu(W_s z) * up(gelu(down(z)))`` with ``z = LN(ssf(norm2(x)))``,
    plus one internal prompt token per block (blocks 0..L-2) made from the mean adapter output."""

    r: int = 72  # bottleneck width of the dynamic adapter (the official ModelNet40 / ScanObjectNN setting)
    dropout: float = 0.0  # dropout on the adapter's hidden activations (DAPT's drop_adapter_rate)
    prompt: bool = True  # internal prompts: P = gamma * mean_t(gelu(adapter out)) + beta, appended for the next block
    ssf: bool | None = None  # SSF scale/shift on norm1, qkv, proj, norm2, fc1, fc2 and the final norm (null: on,
    #                          off in x_mode, where DAPT-X keeps the Adapter-X budget)
    x_mode: bool = False  # DAPT-X: the shared SMoA + prompt generators + block norm instead of the dynamic adapter
    x: dict[str, Any] = field(default_factory=dict)  # XOptions overrides used when x_mode is true

    def validate(self) -> None:
        self.require_positive_int("r")
        self.require_probability("dropout")
        for name in ("prompt", "x_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.ssf is not None and not isinstance(self.ssf, bool):
            raise ValueError(f"ssf must be true, false or null, got {self.ssf!r}")
        if not isinstance(self.x, dict):
            raise ValueError(f"x must be a mapping of Adapter-X options, got {type(self.x).__name__}")
        if self.x and not self.x_mode:
            raise ValueError(f"x options {sorted(self.x)} are given but x_mode is false")
        self.x_options()  # validates the x: node

    @property
    def use_ssf(self) -> bool:
        return (not self.x_mode) if self.ssf is None else self.ssf

    def x_options(self) -> XOptions:
        """DAPT-X's SMoA options: parallel to the FFN, DAPT's dropout and GELU'd prompt, under the ``x:`` overrides."""
        return build_x_options(self.x, {"dropout": self.dropout, "position": "parallel", "pg_gelu": True,
                                        "prompt_generator": self.prompt})
