"""Backbones: Point-MAE / Point-BERT point transformers (and timm ViTs in ``vit.py``), and the backbone contract
(``backbone.py``) that every family registers and the PEFT methods read."""

import os

from torch import nn

from pointpeft.models.backbone import BackboneSpec, backbone_families, describe_backbone, register_backbone
from pointpeft.models.mae import PointMAE, build_point_mae_pretrain, export_pretrain_checkpoint
from pointpeft.models.point_transformer import (
    ARCHITECTURES,
    PointTransformer,
    PointTransformerConfig,
    build_point_transformer,
)
from pointpeft.models.pretrained import LoadReport, load_pretrained
from pointpeft.models.vit import VIT_PRESETS, build_vit, load_vit_weights

__all__ = ["ARCHITECTURES", "BackboneSpec", "LoadReport", "PointMAE", "PointTransformer", "PointTransformerConfig",
           "VIT_PRESETS", "backbone_families", "build_point_mae_pretrain", "build_point_transformer", "build_vit",
           "describe_backbone", "export_pretrain_checkpoint", "load_backbone_weights", "load_pretrained",
           "load_vit_weights", "register_backbone"]


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load pretrained weights into any registered backbone with its family's loader (official Point-MAE /
    Point-BERT / DAPT / IDPT files, timm .npz/.pth/.safetensors) and log what did not match."""
    return describe_backbone(model).load_weights(model, path)
