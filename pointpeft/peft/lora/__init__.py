"""LoRA on the blocks' linear layers (attn.qkv by default), mergeable into the frozen weights."""

from pointpeft.peft.base import register_method
from pointpeft.peft.lora.config import TARGETS, LoraConfig
from pointpeft.peft.lora.layers import LoraBranch
from pointpeft.peft.lora.method import Lora, target_linears

__all__ = ["TARGETS", "Lora", "LoraBranch", "LoraConfig", "target_linears"]

register_method(Lora)
