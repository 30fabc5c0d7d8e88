"""VPT-deep options: learnable prompt tokens in every block."""

from __future__ import annotations

from dataclasses import dataclass

from pointpeft.peft.base import PeftConfig

INITS = ("auto", "uniform", "trunc_normal")


@dataclass
class VptDeepConfig(PeftConfig):
    """``type: vpt_deep``: ``num_prompts`` tokens per block, replacing the previous block's prompts."""

    num_prompts: int = 10  # prompt tokens per block
    dropout: float = 0.0  # dropout on the prompt tokens
    init: str = "auto"  # auto (uniform for ViTs, trunc_normal for points) | uniform | trunc_normal
    init_std: float = 0.02  # std of the trunc_normal init

    def validate(self) -> None:
        self.require_positive_int("num_prompts")
        self.require_probability("dropout")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std!r}")
