"""k-nearest neighbours of query points among a cloud (Point-MAE's ``knn_point``: squared distance, sorted)."""

from __future__ import annotations

import torch


def knn_query(k: int, xyz: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Indices (B, S, k) of the k nearest points of ``xyz`` (B, N, 3) to each ``query`` (B, S, 3), nearest first."""
    d = torch.cdist(query.float(), xyz.float(), compute_mode="donot_use_mm_for_euclid_dist") ** 2
    return d.topk(k, dim=-1, largest=False, sorted=True).indices
