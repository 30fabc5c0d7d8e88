"""Backbones: Point-MAE / Point-BERT point transformers (and timm ViTs in ``vit.py``)."""

from pointpeft.models.point_transformer import (
    ARCHITECTURES,
    PointTransformer,
    PointTransformerConfig,
    build_point_transformer,
)

__all__ = ["ARCHITECTURES", "PointTransformer", "PointTransformerConfig", "build_point_transformer"]
