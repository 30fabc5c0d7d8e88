"""PointLoRA options: LoRA with shared prompt MLPs on attention, plus multi-scale token selection (Wang et al.,
CVPR 2025).

Defaults are the released code's values (``songw-zju/PointLoRA``: ``tools/runner_finetune_pointlora.py``
``inject_pointlora2pt(gamma=8, lora_alpha=8)`` on ``attn.qkv`` and ``attn.proj``; ``models/PointLoRA.py``: prompt MLPs
of width 32, scales (128 x 32, top 32) and (64 x 64, top 8), entropy weights 1 / 0.25, ``0.004 * mask_loss`` in the
runner; ``tools/builder.py`` ``part: pointlora`` also trains the tokenizer's ``first_conv`` and ``pos_embed``).

Parameter budget of the defaults on Point-MAE (D=384, L=12; counted by scripts/param_table.py):

* LoRA r=8 per block: qkv 8*D + 3D*8 = 12,288, proj 8*D + D*8 = 6,144; 12 blocks: 221,184;
* four prompt MLPs shared by all blocks (D -> 32 -> out): patch tokens 24,992, selected tokens 24,992, proj 24,992,
  qkv (out 3D) 50,336: 125,312;
* token scorer D -> D/2 -> 1: 74,113; tokenizer ``encoder.first_conv`` 33,792 and ``pos_embed`` 50,048;
* + CLS/cls_pos 768 + head: 772,752 trainable with ScanObjectNN's 15 classes (head 267,535; the paper's ~0.8M on
  PB_T50_RS), 779,177 with ModelNet40's 40.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pointpeft.peft.base import PeftConfig
from pointpeft.peft.lora.config import check_lora_options
from pointpeft.peft.token_select import TokenScale, parse_scales

#: the released scales: (num_group, group_size, top_k, entropy weight)
RELEASED_SCALES = (
    {"num_group": 128, "group_size": 32, "top_k": 32, "loss_weight": 1.0},
    {"num_group": 64, "group_size": 64, "top_k": 8, "loss_weight": 0.25},
)
#: what the released ``part: pointlora`` trains of the tokenizer, besides CLS and head
RELEASED_TOKENIZER_PARTS = ("encoder.first_conv", "pos_embed")


@dataclass
class PointLoraConfig(PeftConfig):
    """``type: pointlora``: ``W x + B A x + mlp_t(x)`` on every block's target linears (``mlp_t`` one small MLP per
    target name, shared by all blocks), per-block prompt MLPs on the patch and the selected tokens, and the top-k
    tokens of two more tokenizations appended to the sequence."""

    r: int = 8  # LoRA rank (the released gamma)
    alpha: float = 8.0  # the update is scaled by alpha / r = 1 (the released LoRALinear adds B A x unscaled)
    dropout: float = 0.0  # dropout on the LoRA branch's input (released: none)
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "proj"])  # any of qkv, proj, fc1, fc2
    prompt_hidden: int = 32  # width of the prompt MLPs
    scales: list[dict[str, Any]] = field(default_factory=lambda: [dict(s) for s in RELEASED_SCALES])
    mask_loss_weight: float = 0.004  # weight of the scorer's entropy term in the training loss
    reuse_base_tokens: bool = True  # a scale equal to the model's grouping reuses its tokens (same values)
    modules_to_save: list[str] = field(default_factory=lambda: list(RELEASED_TOKENIZER_PARTS))

    def validate(self) -> None:
        self.require_positive_int("r", "prompt_hidden")
        self.target_modules = check_lora_options(self.dropout, self.target_modules)
        self.token_scales()
        w = self.mask_loss_weight
        if not isinstance(w, int | float) or isinstance(w, bool) or w < 0:
            raise ValueError(f"mask_loss_weight must be a number >= 0, got {w!r}")
        self.require_bool("reuse_base_tokens")

    def token_scales(self) -> list[TokenScale]:
        return parse_scales(self.scales)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r
