"""LoRA: attach a low-rank branch to the named linear layers of every block; merge folds it into the weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.attach import attach_adapter, detach_adapter
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.lora.config import LoraConfig
from pointpeft.peft.lora.layers import LoraBranch


def target_linears(spec: Any, targets: list[str]) -> list[nn.Linear]:
    """The blocks' nn.Linear layers whose last name is in ``targets``; ConfigError when nothing matches."""
    found = [m for block in spec.blocks for name, m in block.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ConfigError(f"lora target_modules {targets} match no nn.Linear in the {spec.family} blocks")
    return found


class Lora(PeftMethod):
    name = "lora"
    config_class = LoraConfig
    mergeable = True
    zero_init_output = True

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        for linear in target_linears(spec, cfg.target_modules):
            branch = LoraBranch(linear.in_features, linear.out_features, cfg.r, cfg.scaling, cfg.dropout)
            attach_adapter(linear, branch.to(linear.weight.device, linear.weight.dtype), "parallel")

    def merge(self, model: nn.Module, spec: Any) -> None:
        """``W += scaling * B @ A`` for every LoRA branch, then remove the branches and their hooks."""
        linears = [m for block in spec.blocks for m in block.modules()
                   if isinstance(m, nn.Linear) and isinstance(getattr(m, "peft_adapter", None), LoraBranch)]
        if not linears:
            raise ConfigError("lora: nothing to merge (the model was merged already)")
        with torch.no_grad():
            for linear in linears:
                branch = detach_adapter(linear)
                linear.weight.add_(branch.delta_weight().to(linear.weight.dtype))
