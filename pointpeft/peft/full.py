"""The two reference points every PEFT table has: full fine-tuning and the linear probe (head only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from pointpeft.peft.base import PeftConfig, PeftMethod, register_method


class FullFineTuning(PeftMethod):
    """Everything trains (the tokenizer too, as in Point-MAE's fine-tuning)."""

    name = "full"

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module]:
        return [model]


@dataclass
class LinearProbeConfig(PeftConfig):
    train_cls_token: bool = False  # a linear probe trains the head alone


class LinearProbe(PeftMethod):
    """Only the classification head trains; the backbone's features are used as they are."""

    name = "linear"
    config_class = LinearProbeConfig


register_method(FullFineTuning)
register_method(LinearProbe)
