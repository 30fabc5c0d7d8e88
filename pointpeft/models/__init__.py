"""Backbones: Point-MAE / Point-BERT point transformers (and timm ViTs in ``vit.py``)."""

from pointpeft.models.mae import PointMAE, build_point_mae_pretrain, export_pretrain_checkpoint
from pointpeft.models.point_transformer import (
    ARCHITECTURES,
    PointTransformer,
    PointTransformerConfig,
    build_point_transformer,
)
from pointpeft.models.pretrained import LoadReport, load_pretrained
from pointpeft.models.vit import VIT_PRESETS, build_vit, load_vit_weights

__all__ = ["ARCHITECTURES", "LoadReport", "PointMAE", "PointTransformer", "PointTransformerConfig",
           "VIT_PRESETS",
           "build_point_mae_pretrain", "build_point_transformer", "build_vit", "export_pretrain_checkpoint",
           "load_pretrained", "load_vit_weights"]

#: how ``--ckpt`` weights are read, by backbone family (pointpeft.peft.describe_backbone(model).family)
WEIGHT_LOADERS = {"point_transformer": load_pretrained, "timm_vit": load_vit_weights}


def load_backbone_weights(model, path) -> LoadReport:  # noqa: ANN001 - nn.Module, path-like
    """Load pretrained weights into any supported backbone (official Point-MAE/Point-BERT/DAPT/IDPT files, timm
    .npz/.pth/.safetensors) and log what did not match."""
    from pointpeft.peft.backbones import describe_backbone

    loader = WEIGHT_LOADERS[describe_backbone(model).family]
    return loader(model, path)


__all__ += ["WEIGHT_LOADERS", "load_backbone_weights"]
