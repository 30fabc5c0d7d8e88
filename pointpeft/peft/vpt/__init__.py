"""VPT-deep: learnable prompt tokens per block."""

from pointpeft.peft.base import register_method
from pointpeft.peft.vpt.config import VptDeepConfig
from pointpeft.peft.vpt.layers import BlockPrompts
from pointpeft.peft.vpt.method import VptDeep

__all__ = ["BlockPrompts", "VptDeep", "VptDeepConfig"]

register_method(VptDeep)
