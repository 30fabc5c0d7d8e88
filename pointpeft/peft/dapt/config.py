"""DAPT options: Dynamic Adapter beside the FFN, SSF scale/shift, internal prompts (Zhou et al., CVPR 2024).

The defaults compute what the official ``PointTransformer_DAPT`` (LMD0311/DAPT ``models/DAPT.py``) computes with
its ModelNet40 config: position embedding added once, before block 0; SSF (``tfts``, init N(1, 0.02) / N(0, 0.02))
on the tokenizer output, on norm1, qkv, proj, norm2, fc1, fc2 of every block and after the final norm; a dynamic
adapter beside every FFN; every block (the last too) makes an internal prompt; the head pools ``pool``.
The other data sets' settings (r, adapter dropout, drop path, pooling) are in cfgs/_base_/peft/.

Parameter budget of the defaults on Point-MAE (D=384, L=12, r=72; counted by scripts/param_table.py):

* dynamic adapter per block: LayerNorm 2D + scale Linear(D, 1) + down D*r + r + up r*D + D = 56,905;
* SSF per block (scale and shift, 2 vectors each): norm1 D, qkv 3D, proj D, norm2 D, fc1 4D, fc2 D = 2*11D = 8,448,
  internal prompt scale/shift 2D = 768;
* 12 * (56,905 + 8,448 + 768) + tokenizer SSF 768 + final-norm SSF 768 + CLS/cls_pos 768 + head 273,960 (40 classes,
  CLS + patch max) = 1,069,716 trainable (the paper's 1.1M).

``x_mode: true`` is DAPT-X: the dynamic adapter and internal prompt are replaced by the shared SMoA and its prompt
generators (:mod:`pointpeft.peft.adapterx`, GELU before the mean as DAPT's internal prompt), configured by ``x:``;
DAPT's backbone changes (position embedding once, pooling) stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pointpeft.models.point_transformer import check_pool
from pointpeft.peft.adapterx.config import XOptions, build_x_options
from pointpeft.peft.base import PeftConfig
from pointpeft.peft.dapt.layers import SSF_INITS

POS_EMBED = ("once", "every_block")


@dataclass
class DaptConfig(PeftConfig):
    """``type: dapt``: ``y = ffn(ssf(norm2(x))) + relu(W_s z) * up(gelu(down(z)))`` with ``z = LN(ssf(norm2(x)))``,
    plus one internal prompt token per block made from the mean adapter output."""

    r: int = 72  # bottleneck width of the dynamic adapter (the official ModelNet40 setting; ScanObjectNN: 64)
    dropout: float = 0.0  # dropout on the adapter's hidden activations (DAPT's drop_adapter_rate)
    prompt: bool = True  # internal prompts: P = gamma * mean_t(gelu(adapter out)) + beta, one per block
    ssf: bool | None = None  # SSF scale/shift on the tokenizer output, norm1, qkv, proj, norm2, fc1, fc2 and the
    #                          final norm (null: on, off in x_mode, where DAPT-X keeps the Adapter-X budget)
    ssf_init: str = "normal"  # normal: gamma ~ N(1, 0.02), beta ~ N(0, 0.02) (DAPT's init_tfts) | identity: 1, 0
    pos_embed: str = "once"  # once: added before block 0 only (DAPT) | every_block (Point-MAE); point transformers
    pool: list[str] | None = None  # head input (names of pointpeft.models.point_transformer.POOLS), e.g.
    #   [cls, prompt_mean, patch_max] = DAPT's class_token/prompt_token/patch_token "use"/"mean"/"max";
    #   null keeps the backbone's (Point-MAE: [cls, patch_max], DAPT's ModelNet40 setting); point transformers only
    x_mode: bool = False  # DAPT-X: the shared SMoA + prompt generators + block norm instead of the dynamic adapter
    x: dict[str, Any] = field(default_factory=dict)  # XOptions overrides used when x_mode is true

    def validate(self) -> None:
        self.require_positive_int("r")
        self.require_probability("dropout")
        self.require_bool("prompt", "x_mode")
        if self.ssf is not None and not isinstance(self.ssf, bool):
            raise ValueError(f"ssf must be true, false or null, got {self.ssf!r}")
        self.require_choice("ssf_init", SSF_INITS)
        self.require_choice("pos_embed", POS_EMBED)
        if not isinstance(self.x, dict):
            raise ValueError(f"x must be a mapping of Adapter-X options, got {type(self.x).__name__}")
        if self.x and not self.x_mode:
            raise ValueError(f"x options {sorted(self.x)} are given but x_mode is false")
        self.x_options()  # validates the x: node
        if self.pool is not None:
            check_pool(self.pool)
            if self.reads_prompts and not self.makes_prompts:
                raise ValueError(f"pool {self.pool} reads prompt tokens, but prompts are off")

    @property
    def use_ssf(self) -> bool:
        return (not self.x_mode) if self.ssf is None else self.ssf

    @property
    def makes_prompts(self) -> bool:
        return bool(self.x_options().prompt_generator) if self.x_mode else self.prompt

    @property
    def reads_prompts(self) -> bool:
        """The head pools prompt tokens, so they stay in the sequence after the last block."""
        return any(name.startswith("prompt") for name in self.pool or ())

    def x_options(self) -> XOptions:
        """DAPT-X's SMoA options: parallel to the FFN, DAPT's dropout and GELU'd prompt, under the ``x:`` overrides."""
        return build_x_options(self.x, {"dropout": self.dropout, "position": "parallel", "pg_gelu": True,
                                        "prompt_generator": self.prompt})
