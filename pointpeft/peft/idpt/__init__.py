"""IDPT: instance-aware dynamic prompts from an EdgeConv (DGCNN-style) module before the last block."""

from pointpeft.peft.base import register_method
from pointpeft.peft.idpt.config import IdptConfig
from pointpeft.peft.idpt.layers import DynamicPromptModule, EdgeConv, edge_features, knn_indices
from pointpeft.peft.idpt.method import Idpt, PromptInserter

__all__ = ["DynamicPromptModule", "EdgeConv", "Idpt", "IdptConfig", "PromptInserter", "edge_features",
           "knn_indices"]

register_method(Idpt)
