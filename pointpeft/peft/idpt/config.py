"""IDPT options: an instance-aware dynamic prompt made by a DGCNN-style EdgeConv module (Zha et al., ICCV 2023).

Parameter budget of the defaults on Point-MAE (D=384, 3 EdgeConv layers; counted by scripts/param_table.py):
3 EdgeConvs Conv(2D -> D, no bias) + BatchNorm = 3 * (2D*D + 2D) = 887,040, fusion Conv(3D -> D, no bias) + BatchNorm
= 443,136 -> prompt module 1,330,176, + CLS/cls_pos 768 + head 273,960 (40 classes) = 1,604,904 trainable (the
paper's 1.7M counts its head on CLS + prompt + max-pool, 372,264 parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from pointpeft.peft.base import PeftConfig

ACTIVATIONS = ("leaky_relu", "relu")


@dataclass
class IdptConfig(PeftConfig):
    """``type: idpt``: EdgeConv over the patch tokens entering ``prompt_layer`` -> max-pool -> prompt token(s)."""

    k: int = 20  # neighbours in feature space for every EdgeConv (capped at the number of patch tokens)
    num_edgeconv: int = 3  # stacked EdgeConv layers (official "dgcnn" = 3; "dgcnn_light" = 1)
    num_prompts: int = 1  # prompt tokens made per instance (> 1: the fused feature is projected to each token)
    prompt_layer: int = -1  # index of the block whose input gets the prompt (-1: the last block, as IDPT does)
    activation: str = "leaky_relu"  # leaky_relu (slope 0.2, as the official module) | relu

    def validate(self) -> None:
        self.require_positive_int("k", "num_edgeconv", "num_prompts")
        if not isinstance(self.prompt_layer, int) or isinstance(self.prompt_layer, bool):
            raise ValueError(f"prompt_layer must be an integer block index, got {self.prompt_layer!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
