"""Backbones: Point-MAE / Point-BERT point transformers (and timm ViTs in ``vit.py``)."""

from pointpeft.models.checkpoint import LoadReport, load_pretrained
from pointpeft.models.point_transformer import (
    ARCHITECTURES,
    PointTransformer,
    PointTransformerConfig,
    build_point_transformer,
)

__all__ = ["ARCHITECTURES", "LoadReport", "PointTransformer", "PointTransformerConfig", "build_point_transformer",
           "load_pretrained"]
