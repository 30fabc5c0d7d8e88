"""Prompts that act on the input cloud itself, before the tokenizer (GAPrompt, ICML 2025; usable by any method).

* :class:`PointPrompt`: learnable points appended to every cloud, so the tokenizer's FPS and kNN group them with the
  real points (``models/GAPrompt.py::PointPrompt`` in zhoujiahuan1991/ICML2025-GAPrompt);
* :class:`PointShiftPrompter`: a two-level PointNet++-style network that moves every point by an instance-specific
  offset and returns a global shape code (``ShiftNet`` there).

Both are plain modules of a cloud (B, N, 3); a method installs them with
``PointTransformer.register_point_hook``. Module and parameter names are the released ones (``points``,
``abstraction_level1.mlp_convs.0`` ...), so the released fine-tuned tensors map one to one. The geometric helpers
(:func:`inverse_distance_interpolate`, :func:`square_distance`) are shared with GAPrompt's prompt propagation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.models.batchnorm import WarmStartBatchNorm1d
from pointpeft.ops import farthest_point_sample, gather_points, knn_query


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances (B, N, S) between a (B, N, 3) and b (B, S, 3) as ``|a|^2 + |b|^2 - 2ab`` (the released
    code's form, differentiable in both), clamped at 0 so rounding never makes a weight ``1 / (d + eps)`` negative."""
    d = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(1) - 2.0 * a @ b.transpose(1, 2)
    return d.clamp_min(0.0)


def inverse_distance_interpolate(query: torch.Tensor, source: torch.Tensor, feats: torch.Tensor, k: int,
                                 eps: float) -> torch.Tensor:
    """Features (B, N, C) at ``query`` (B, N, 3): the ``1 / (d^2 + eps)``-weighted mean of the features (B, S, C)
    of the ``min(k, S)`` nearest ``source`` points (B, S, 3) — PointNet++ feature propagation with k neighbours."""
    d = square_distance(query, source)
    d, idx = d.topk(min(k, source.shape[1]), dim=-1, largest=False)
    w = 1.0 / (d + eps)
    w = w / w.sum(dim=-1, keepdim=True)
    return (gather_points(feats, idx) * w.unsqueeze(-1)).sum(dim=2)


def _shared_mlp(rows: torch.Tensor, convs: nn.ModuleList, bns: nn.ModuleList) -> torch.Tensor:
    """relu(bn(conv(x))) per layer on channels-last rows: the 1x1 convolutions as GEMMs, BatchNorm over all rows
    (what BatchNorm2d/1d over (B, C, ...) computes)."""
    for conv, bn in zip(convs, bns):
        rows = F.relu(bn(F.linear(rows, conv.weight.flatten(1), conv.bias)))
    return rows


class PositionalEncoding(nn.Module):
    """NeRF-style ``(x, sin(2^k x), cos(2^k x))`` for k < ``levels``: 3 (2 levels + 1) channels, no parameters."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    @property
    def out_channels(self) -> int:
        return 3 * (2 * self.levels + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [x]
        for k in range(self.levels):
            out += [torch.sin(2.0**k * x), torch.cos(2.0**k * x)]
        return torch.cat(out, dim=-1)


class SetAbstraction(nn.Module):
    """FPS ``num_group`` centres, gather the features of their ``group_size`` nearest points, shared MLP, max-pool."""

    def __init__(self, num_group: int, group_size: int, in_channels: int, mlp: list[int],
                 fps_backend: str = "auto") -> None:
        super().__init__()
        self.num_group, self.group_size, self.fps_backend = num_group, group_size, fps_backend
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        for out in mlp:
            self.mlp_convs.append(nn.Conv2d(in_channels, out, 1))  # the released layer (shape (out, in, 1, 1))
            self.mlp_bns.append(WarmStartBatchNorm1d(out))
            in_channels = out

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz (B, N, 3), feats (B, N, C) -> centres (B, G, 3), features (B, G, mlp[-1])."""
        B = xyz.shape[0]
        center = gather_points(xyz, farthest_point_sample(xyz, self.num_group, backend=self.fps_backend))
        grouped = gather_points(feats, knn_query(self.group_size, xyz, center))  # (B, G, K, C)
        rows = _shared_mlp(grouped.reshape(-1, grouped.shape[-1]), self.mlp_convs, self.mlp_bns)
        return center, rows.view(B, self.num_group, self.group_size, -1).max(dim=2).values


class FeaturePropagation(nn.Module):
    """Interpolate coarse features onto finer points (32 neighbours, ``1 / (d^2 + 1e-4)``), concat, shared MLP."""

    def __init__(self, in_channels: int, mlp: list[int], neighbors: int = 32) -> None:
        super().__init__()
        self.neighbors = neighbors
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        for out in mlp:
            self.mlp_convs.append(nn.Conv1d(in_channels, out, 1))
            self.mlp_bns.append(WarmStartBatchNorm1d(out))
            in_channels = out

    def forward(self, xyz1: torch.Tensor, xyz2: torch.Tensor, feats1: torch.Tensor,
                feats2: torch.Tensor) -> torch.Tensor:
        """Fine points xyz1 (B, N, 3) with feats1 (B, N, D1), coarse xyz2 (B, S, 3) with feats2 (B, S, D2)."""
        B, N, _ = xyz1.shape
        up = inverse_distance_interpolate(xyz1, xyz2, feats2, self.neighbors, 1e-4)
        rows = torch.cat([feats1, up], dim=-1).reshape(B * N, -1)
        return _shared_mlp(rows, self.mlp_convs, self.mlp_bns).view(B, N, -1)


class PointShiftPrompter(nn.Module):
    """GAPrompt's Point Shift Prompter: ``x + perturbation * x * mlp(f(x))`` per point, and a global shape code.

    ``f`` is a two-level PointNet++ on the NeRF encoding of the coordinates: set abstraction to ``num_group``
    centres (32 neighbours, MLP 64-32-64), then to ``num_group / 2`` (``group_size / 2`` neighbours, MLP
    64-32-``top_center_dim``), and feature propagation back to the centres (MLP 64-32) and to every point (32-32).
    The shape code is the flattened coarse features (B, num_group / 2 * top_center_dim). The offset MLP
    (32-64-3, dropout 0.2) starts with PyTorch's default weights and zero biases, as released: the shift is not zero
    at initialisation.
    """

    def __init__(self, num_group: int, group_size: int, perturbation: float = 0.05, embedding_level: int = 4,
                 top_center_dim: int = 8, fps_backend: str = "auto") -> None:
        super().__init__()
        if num_group < 2 or group_size < 2:
            raise ValueError(f"the shift prompter needs num_group and group_size >= 2, got {num_group}, {group_size}")
        self.num_group, self.group_size = num_group, group_size
        self.perturbation = perturbation
        self.top_center_dim = top_center_dim
        self.position_embedding = PositionalEncoding(embedding_level)
        c = self.position_embedding.out_channels
        self.abstraction_level1 = SetAbstraction(num_group, group_size, c, [64, 32, 64], fps_backend)
        self.abstraction_level2 = SetAbstraction(num_group // 2, group_size // 2, 64, [64, 32, top_center_dim],
                                                 fps_backend)
        self.propagation1 = FeaturePropagation(c + 32, [32, 32])
        self.propagation2 = FeaturePropagation(64 + top_center_dim, [64, 32])
        self.mlp_position = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 3))
        for layer in self.mlp_position:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
                nn.init.zeros_(layer.bias)

    @property
    def shape_dim(self) -> int:
        """Width of the global shape code."""
        return self.num_group // 2 * self.top_center_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, 3) -> shifted cloud (B, N, 3), shape code (B, shape_dim)."""
        B = x.shape[0]
        feats = self.position_embedding(x)
        c1, f1 = self.abstraction_level1(x, feats)
        c2, f2 = self.abstraction_level2(c1, f1)
        f1 = self.propagation2(c1, c2, f1, f2)
        per_point = self.propagation1(x, c1, feats, f1)
        shifted = x + self.mlp_position(per_point) * self.perturbation * x
        return shifted, f2.reshape(B, -1)

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}, perturbation={self.perturbation}"


class PointPrompt(nn.Module):
    """``point_number`` learnable points appended to every cloud: ``cat(x, factor * points)``.

    ``points`` starts uniform in [-scale, scale] (the released ``init_type='uniform'``); ``factor`` rescales them
    (a larger effective learning rate for the coordinates, 5 in every released config).
    """

    def __init__(self, point_number: int, scale: float = 0.01, factor: float = 5.0) -> None:
        super().__init__()
        self.factor = factor
        self.points = nn.Parameter(torch.empty(1, point_number, 3).uniform_(-scale, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = (self.points * self.factor).to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x, extra], dim=1)
