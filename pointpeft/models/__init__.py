"""Backbones: Point-MAE / Point-BERT point transformers (and timm ViTs in ``vit.py``)."""

from pointpeft.models.checkpoint import LoadReport, load_pretrained
from pointpeft.models.mae import PointMAE, build_point_mae_pretrain, export_pretrain_checkpoint
from pointpeft.models.point_transformer import (
    ARCHITECTURES,
    PointTransformer,
    PointTransformerConfig,
    build_point_transformer,
)

__all__ = ["ARCHITECTURES", "LoadReport", "PointMAE", "PointTransformer", "PointTransformerConfig",
           "build_point_mae_pretrain", "build_point_transformer", "export_pretrain_checkpoint", "load_pretrained"]
