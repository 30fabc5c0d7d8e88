"""PointLoRA: low-rank adaptation with multi-scale token selection for point clouds."""

from pointpeft.peft.base import register_method
from pointpeft.peft.pointlora.config import RELEASED_SCALES, PointLoraConfig
from pointpeft.peft.pointlora.layers import PointLoraModules, PromptedLoraBranch, prompt_mlp
from pointpeft.peft.pointlora.method import PointLora

__all__ = ["RELEASED_SCALES", "PointLora", "PointLoraConfig", "PointLoraModules", "PromptedLoraBranch", "prompt_mlp"]

register_method(PointLora)
