"""LoRA options: low-rank updates of the blocks' linear layers (attn.qkv by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pointpeft.peft.base import PeftConfig

#: Linear layers of a block LoRA can target, by their last name (the same in point transformers and timm ViTs).
TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class LoraConfig(PeftConfig):
    """``type: lora``: ``W x + (alpha / r) * B A dropout(x)`` on every block's target linears; B starts at zero."""

    r: int = 8  # rank of the update
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch's input
    target_modules: list[str] = field(default_factory=lambda: ["qkv"])  # any of qkv, proj, fc1, fc2

    def validate(self) -> None:
        self.require_positive_int("r")
        self.target_modules = check_lora_options(self.dropout, self.target_modules)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def check_lora_options(dropout: float, target_modules: list[str] | str) -> list[str]:
    """Validate the LoRA branch's dropout and targets (shared by LoRA and MHR's LoRA inventory); the targets as a
    list."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("target_modules must name at least one of " + ", ".join(TARGETS))
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"target_modules {bad} are not LoRA targets; allowed: {list(TARGETS)}")
    return targets
