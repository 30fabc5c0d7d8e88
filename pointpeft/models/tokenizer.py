"""Point-MAE / Point-BERT tokenizer: FPS centres + kNN patches (``Group``) and the mini-PointNet (``Encoder``).

Parameter names and shapes are the official ones (``first_conv.{0,1,3}``, ``second_conv.{0,1,3}``) so released
checkpoints load unchanged; the 1x1 convolutions are computed as GEMMs on channels-last input (same numbers,
faster on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.errors import InputError
from pointpeft.ops import farthest_point_sample, gather_points, knn_query


def check_points(pts: torch.Tensor, min_points: int, name: str = "points") -> None:
    """Raise InputError unless ``pts`` is a finite float tensor (B, N, 3) with N >= min_points."""
    if not isinstance(pts, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor of shape (B, N, 3), got {type(pts).__name__}")
    if pts.dim() != 3 or pts.shape[-1] != 3:
        raise InputError(f"{name}: expected shape (B, N, 3), got {tuple(pts.shape)}")
    if not pts.is_floating_point():
        raise InputError(f"{name}: expected a float tensor, got dtype {pts.dtype}")
    if pts.shape[0] == 0:
        raise InputError(f"{name}: empty batch (B=0)")
    if pts.shape[1] < min_points:
        raise InputError(
            f"{name}: each cloud needs at least {min_points} points (num_group / group_size), got N={pts.shape[1]}"
        )
    bad = ~torch.isfinite(pts).all(dim=-1)
    if bad.any():
        b, n = (int(v) for v in bad.nonzero()[0])
        raise InputError(f"{name}: NaN or inf at cloud {b}, point {n} ({int(bad.sum())} bad points in the batch)")


class Group(nn.Module):
    """Split each cloud into ``num_group`` patches of ``group_size`` points, centred on their FPS centre."""

    def __init__(self, num_group: int, group_size: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        self.backend = backend

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz (B, N, 3) -> neighborhood (B, G, M, 3) centred, center (B, G, 3)."""
        check_points(xyz, max(self.num_group, self.group_size), "points")
        xyz = xyz.contiguous()
        center_idx = farthest_point_sample(xyz, self.num_group, backend=self.backend)
        center = gather_points(xyz, center_idx)
        idx = knn_query(self.group_size, xyz, center)
        neighborhood = gather_points(xyz, idx) - center.unsqueeze(2)
        return neighborhood, center

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}, backend={self.backend!r}"


def _pointwise(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def _bn(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    shape = x.shape
    return bn(x.reshape(-1, shape[-1])).reshape(shape)


class Encoder(nn.Module):
    """Mini-PointNet: shared MLP, max-pool, concat the global feature, shared MLP, max-pool -> one token a patch."""

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, encoder_channel, 1)
        )

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        """point_groups (B, G, M, 3) -> tokens (B, G, encoder_channel)."""
        B, G, M, _ = point_groups.shape
        x = point_groups.reshape(B * G, M, 3)
        f1, b1, _, f2 = self.first_conv
        x = _pointwise(F.relu(_bn(_pointwise(x, f1), b1)), f2)  # (BG, M, 256)
        glob = x.max(dim=1, keepdim=True).values
        x = torch.cat([glob.expand(-1, M, -1), x], dim=-1)  # (BG, M, 512)
        s1, b2, _, s2 = self.second_conv
        x = _pointwise(F.relu(_bn(_pointwise(x, s1), b2)), s2)
        return x.max(dim=1).values.reshape(B, G, self.encoder_channel)
