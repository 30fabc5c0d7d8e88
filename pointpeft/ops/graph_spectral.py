"""Graph spectral bases of point sets: the eigenvectors of the normalised Laplacian of a fully connected graph.

PointGST (Liang et al., TPAMI 2025; ``jerryfeng2003/PointGST``, ``models/PGST.py``: ``get_basis`` and
``get_laplacian``) moves patch tokens into the spectral domain of a graph over the patch centres. The graph links
every pair of centres with weight ``d_min / d_ij`` (``d_min`` the smallest non-zero distance) and every centre to
itself with weight 1; the basis is the eigenvector matrix of ``L = I - D^-1/2 W D^-1/2``, eigenvalues ascending.

The released code takes ``d_min`` over the whole batch (``min(L[L > 0])`` flattens it), so a cloud's basis depends on
the other clouds of its batch; ``scale="cloud"`` takes it per graph instead. Pure torch, batched over any leading
dimensions; the eigendecomposition runs in float32 (float64 for float64 input) outside autocast. Its cost was
measured in tests/test_graph_spectral.py's docstring.
"""

from __future__ import annotations

import torch

from pointpeft.errors import InputError
from pointpeft.ops.knn import pairwise_distance

#: how the distances are normalised before inverting them (see the module docstring)
DISTANCE_SCALES = ("batch", "cloud")


def _check_points(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() < 2 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise InputError(f"{name}: expected points of shape (..., G, 3), got {shape}")
    if not points.is_floating_point():
        raise InputError(f"{name}: expected a float tensor, got {points.dtype}")
    if points.shape[-2] < 2:
        raise InputError(f"{name}: a graph needs at least 2 vertices, got {points.shape[-2]}")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def inverse_distance_adjacency(points: torch.Tensor, scale: str = "batch") -> torch.Tensor:
    """Weights (..., G, G): ``1 / (d_ij / d_min + I)``, i.e. ``d_min / d_ij`` off the diagonal and 1 on it.

    Coincident distinct points (distance 0 off the diagonal) are treated as being ``d_min`` apart (weight 1) instead
    of the released code's division by zero; for distinct points nothing changes, since every ratio is >= 1.
    """
    _check_points(points, "inverse_distance_adjacency")
    if scale not in DISTANCE_SCALES:
        raise ValueError(f"scale must be one of {list(DISTANCE_SCALES)}, got {scale!r}")
    lead, g = points.shape[:-2], points.shape[-2]
    flat = points.reshape(-1, g, 3).to(_compute_dtype(points))
    d = pairwise_distance(flat, flat)  # (M, G, G), exact
    eye = torch.eye(g, dtype=d.dtype, device=d.device)
    positive = torch.where(d > 0, d, torch.full_like(d, torch.inf))
    if scale == "batch":
        d_min = positive.amin()
    else:
        d_min = positive.flatten(1).amin(dim=1).view(-1, 1, 1)
    d_min = torch.where(torch.isfinite(d_min), d_min, torch.ones_like(d_min))  # every point coincident
    ratio = (d / d_min).clamp_min(1.0) * (1 - eye)  # off-diagonal ratios; 0 on the diagonal
    return (1.0 / (ratio + eye)).reshape(*lead, g, g)


def normalized_laplacian(adjacency: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``I - D^-1/2 W D^-1/2`` with ``D`` the row sums (``eps`` added before the inverse square root, as released)."""
    inv_sqrt = torch.rsqrt(adjacency.sum(dim=-1) + eps)
    eye = torch.eye(adjacency.shape[-1], dtype=adjacency.dtype, device=adjacency.device)
    return eye - inv_sqrt.unsqueeze(-1) * adjacency * inv_sqrt.unsqueeze(-2)


def graph_spectral_basis(points: torch.Tensor, scale: str = "batch") -> torch.Tensor:
    """Orthonormal eigenvectors (..., G, G) of the normalised Laplacian of the points' graph, as columns, eigenvalues
    ascending (``torch.linalg.eigh``; each column's sign is the solver's). No gradient flows into the points."""
    with torch.no_grad(), torch.autocast(points.device.type, enabled=False):
        lap = normalized_laplacian(inverse_distance_adjacency(points.detach(), scale))
        _, basis = torch.linalg.eigh(lap)
    return basis


def partition_spectral_bases(points: torch.Tensor, order: torch.Tensor, part_size: int,
                             scale: str = "batch") -> torch.Tensor:
    """Bases (B, G / part_size, part_size, part_size) of consecutive runs of ``part_size`` points in ``order``.

    PointGST's local bases: the centres sorted along a space-filling curve (``order`` (B, G), e.g.
    :func:`pointpeft.ops.zorder.zorder_permutation`) are cut into equal parts, each with its own graph.
    """
    _check_points(points, "partition_spectral_bases")
    b, g, _ = points.shape
    if part_size < 2 or g % part_size:
        raise InputError(f"partition_spectral_bases: {g} points cannot be cut into parts of {part_size} (need a "
                         "divisor of the point count, at least 2)")
    if order.shape != (b, g):
        raise InputError(f"partition_spectral_bases: order must have shape {(b, g)}, got {tuple(order.shape)}")
    sorted_pts = torch.gather(points, 1, order.unsqueeze(-1).expand(-1, -1, 3))
    return graph_spectral_basis(sorted_pts.reshape(b, g // part_size, part_size, 3), scale)
