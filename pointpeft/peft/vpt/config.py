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
    # point transformers: every block's prompts carry a learnable position of their own (trunc_normal 0.02), as the
    # point-cloud VPT-deep baseline (IDPT's PointTransformerPromptDeep: cls_prompt_pos_list); None: on for point
    # transformers, off for ViTs (VPT's prompts join after the position embedding, with none)
    prompt_pos: bool | None = None

    def validate(self) -> None:
        self.require_positive_int("num_prompts")
        self.require_probability("dropout")
        self.require_choice("init", INITS)
        if self.prompt_pos is not None and not isinstance(self.prompt_pos, bool):
            raise ValueError(f"prompt_pos must be true, false or null, got {self.prompt_pos!r}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std!r}")
