"""k-nearest neighbours of query points among a cloud (Point-MAE's ``knn_point``: exact, nearest first).

Brute force on exact pairwise distances (``torch.cdist`` without the matrix-product shortcut, whose
``|a|^2 - 2ab + |b|^2`` cancellation can reorder close neighbours), chunked over the queries so memory stays
bounded on large clouds. Sorting by the Euclidean distance gives the same order as by its square.
"""

from __future__ import annotations

import torch

from pointpeft.errors import InputError

#: Default cap on the elements of one (B, chunk, N) distance block: 2**23 floats = 32 MiB.
KNN_MAX_ELEMENTS = 2**23


def _check_cloud(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != 3:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"knn_query: {name} must be a tensor of shape (B, N, 3), got {shape}")
    if not t.is_floating_point():
        raise InputError(f"knn_query: {name} must be a float tensor, got {t.dtype}")


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (B, S, N) between a (B, S, 3) and b (B, N, 3)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_query(k: int, xyz: torch.Tensor, query: torch.Tensor, *,
              max_elements: int = KNN_MAX_ELEMENTS) -> torch.Tensor:
    """Indices (B, S, k) int64 of the k nearest points of ``xyz`` (B, N, 3) to each ``query`` (B, S, 3).

    Sorted nearest first; computed in float32 (float64 if an input is float64). ``max_elements`` bounds one
    distance block (B x queries-per-chunk x N); the result does not depend on it.
    """
    _check_cloud(xyz, "xyz")
    _check_cloud(query, "query")
    B, N, _ = xyz.shape
    if query.shape[0] != B:
        raise InputError(f"knn_query: batch sizes differ: xyz has B={B}, query has B={query.shape[0]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"knn_query: k must be an int >= 1, got {k!r}")
    if k > N:
        raise InputError(f"knn_query: k={k} exceeds the {N} points of each cloud")
    S = query.shape[1]
    dtype = _compute_dtype(xyz, query)
    with torch.no_grad():
        xyz = xyz.detach().to(dtype)
        query = query.detach().to(dtype)
        rows = max(1, max_elements // max(1, B * N))
        if rows >= S:
            return pairwise_distance(query, xyz).topk(k, dim=-1, largest=False, sorted=True).indices
        out = torch.empty(B, S, k, dtype=torch.long, device=xyz.device)
        for s in range(0, S, rows):
            d = pairwise_distance(query[:, s : s + rows], xyz)
            out[:, s : s + rows] = d.topk(k, dim=-1, largest=False, sorted=True).indices
        return out
