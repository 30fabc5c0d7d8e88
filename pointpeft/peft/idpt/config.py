"""IDPT options: an instance-aware dynamic prompt made by a DGCNN-style EdgeConv module (Zha et al., ICCV 2023).

The defaults compute what the official ``PointTransformer`` (zyh16143998882/ICCV23-IDPT ``models/Point_MAE.py``,
``prompt_module: dgcnn``, ``prompt_layer: 11``, ``cls_type: all``) computes: the EdgeConv module reads the patch
tokens leaving block 10 (before the position embedding is added), its prompt joins block 11's input with a
position ``prompt_pos`` of its own, and the head pools CLS, the prompt and the max over patches.

Parameter budget of the defaults on Point-MAE (D=384, 3 EdgeConv layers; counted by scripts/param_table.py):
3 EdgeConvs Conv(2D -> D, no bias) + BatchNorm = 3 * (2D*D + 2D) = 887,040, fusion Conv(3D -> D, no bias) + BatchNorm
= 443,136 -> prompt module 1,330,176, + CLS/cls_pos 768 + head on CLS + prompt + max-pool 372,264 (40 classes) =
1,703,208 trainable (the paper's 1.7M). ``prompt_pos`` (D) does not train in the original (its optimiser takes only
parameters named ``cls``), so it is a fixed random buffer here, saved with the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointpeft.models.point_transformer import check_pool
from pointpeft.peft.base import PeftConfig

ACTIVATIONS = ("leaky_relu", "relu")
#: IDPT's cls_type "all" (CLS, the prompt, max over patches); "promptonly" = [prompt_mean], "pointcls" =
#: [cls, patch_max], "promptcls" = [cls, prompt_mean]
ORIGINAL_POOL = ("cls", "prompt_mean", "patch_max")


@dataclass
class IdptConfig(PeftConfig):
    """``type: idpt``: EdgeConv over the patch tokens entering ``prompt_layer`` -> max-pool -> prompt token(s)."""

    k: int = 20  # neighbours in feature space for every EdgeConv (capped at the number of patch tokens)
    num_edgeconv: int = 3  # stacked EdgeConv layers (official "dgcnn" = 3; "dgcnn_light" = 1)
    num_prompts: int = 1  # prompt tokens made per instance (> 1: the fused feature is projected to each token)
    prompt_layer: int = -1  # index of the block whose input gets the prompt (-1: the last block, as IDPT does)
    activation: str = "leaky_relu"  # leaky_relu (slope 0.2, as the official module) | relu
    pool: list[str] | None = None  # head input (pointpeft.models.point_transformer.POOLS names); null: IDPT's
    #   cls_type "all" [cls, prompt_mean, patch_max] on point transformers, the backbone's own pooling on timm ViTs
    train_prompt_pos: bool = False  # the prompt's position embedding trains (the original never updates it)

    def validate(self) -> None:
        self.require_positive_int("k", "num_edgeconv", "num_prompts")
        if not isinstance(self.prompt_layer, int) or isinstance(self.prompt_layer, bool):
            raise ValueError(f"prompt_layer must be an integer block index, got {self.prompt_layer!r}")
        self.require_choice("activation", ACTIVATIONS)
        self.require_bool("train_prompt_pos")
        if self.pool is not None:
            check_pool(self.pool)
