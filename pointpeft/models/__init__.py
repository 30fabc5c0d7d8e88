"""Backbones: Point-MAE / Point-BERT point transformers (and timm ViTs in ``vit.py``)."""

from pointpeft.models.checkpoint import LoadReport, load_pretrained
from pointpeft.models.mae import PointMAE, build_point_mae_pretrain, export_pretrain_checkpoint
from pointpeft.models.point_transformer import (
    ARCHITECTURES,
    PointTransformer,
    PointTransformerConfig,
    build_point_transformer,
)
from pointpeft.models.vit import VIT_PRESETS, build_vit, load_vit_weights

__all__ = ["ARCHITECTURES", "LoadReport", "PointMAE", "PointTransformer", "PointTransformerConfig",
           "VIT_PRESETS",
           "build_point_mae_pretrain", "build_point_transformer", "build_vit", "export_pretrain_checkpoint",
           "load_pretrained", "load_vit_weights"]
