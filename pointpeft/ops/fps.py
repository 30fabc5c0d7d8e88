"""Farthest point sampling. Starts from point 0 of each cloud, like pointnet2_ops, so indices match the originals."""

from __future__ import annotations

import torch


def fps_torch(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Reference FPS, batched over clouds: ``npoint`` sequential steps, each vectorised over B and N."""
    B, N, _ = xyz.shape
    idx = torch.zeros(B, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    batch = torch.arange(B, device=xyz.device)
    for i in range(npoint):
        idx[:, i] = farthest
        centroid = xyz[batch, farthest].unsqueeze(1)
        d = ((xyz - centroid) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        farthest = dist.argmax(-1)
    return idx


def farthest_point_sample(xyz: torch.Tensor, npoint: int, backend: str = "auto") -> torch.Tensor:
    """Indices (B, npoint) of FPS on xyz (B, N, 3)."""
    return fps_torch(xyz.float(), npoint)


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, ...) -> (B, ..., C)."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])
