"""Classification heads with the official module indices (``cls_head_finetune.{0,1,4,5,8}`` for Point-MAE)."""

from __future__ import annotations

from torch import nn

from pointpeft.models.batchnorm import WarmStartBatchNorm1d


def point_mae_head(in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """Point-MAE's head: Linear-BN-ReLU-Dropout x2, Linear. Input is concat(CLS, max-pooled tokens)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), WarmStartBatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), WarmStartBatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def point_bert_head(in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5) -> nn.Sequential:
    """Point-BERT's head: Linear-ReLU-Dropout, Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


HEADS = {"point_mae": point_mae_head, "point_bert": point_bert_head}
