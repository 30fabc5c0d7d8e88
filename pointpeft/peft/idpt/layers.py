"""IDPT's prompt module: EdgeConv layers (kNN in feature space) over the patch tokens, fused and max-pooled."""

from __future__ import annotations

import torch
from torch import nn

from pointpeft.models.batchnorm import WarmStartBatchNorm1d


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, k) indices of the k nearest tokens of every token (itself included) by squared L2 in feature space."""
    sq = (x * x).sum(dim=-1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * (x @ x.transpose(1, 2))
    return dist.topk(k, dim=-1, largest=False).indices


def edge_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """DGCNN edge features (B, N, k, 2C): ``[x_j - x_i, x_i]`` for the k neighbours j of every token i."""
    B, N, C = x.shape
    idx = knn_indices(x, k)
    nbrs = x.gather(1, idx.reshape(B, N * k, 1).expand(-1, -1, C)).reshape(B, N, k, C)
    centre = x.unsqueeze(2).expand(-1, -1, k, -1)
    return torch.cat([nbrs - centre, centre], dim=-1)


class EdgeConv(nn.Module):
    """Shared ``Linear(2C -> C_out, no bias) -> BatchNorm -> activation`` on every edge, max over the k neighbours."""

    def __init__(self, in_dim: int, out_dim: int, k: int, activation: str = "leaky_relu") -> None:
        super().__init__()
        self.k = k
        self.proj = nn.Linear(2 * in_dim, out_dim, bias=False)
        self.bn = WarmStartBatchNorm1d(out_dim)
        self.act = nn.LeakyReLU(0.2) if activation == "leaky_relu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        k = min(self.k, N)
        e = self.proj(edge_features(x, k))  # (B, N, k, C_out)
        e = self.act(self.bn(e.reshape(-1, e.shape[-1])).reshape(B, N, k, -1))
        return e.max(dim=2).values


class DynamicPromptModule(nn.Module):
    """``num_edgeconv`` EdgeConvs, concat of their outputs -> Linear + BatchNorm + activation -> max over tokens.

    Returns (B, num_prompts, D): one prompt token per instance by default (IDPT); with ``num_prompts > 1`` the
    others are learned linear projections of the same pooled feature.
    """

    def __init__(self, dim: int, k: int = 20, num_edgeconv: int = 3, num_prompts: int = 1,
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        self.convs = nn.ModuleList([EdgeConv(dim, dim, k, activation) for _ in range(num_edgeconv)])
        self.fuse = nn.Linear(dim * num_edgeconv, dim, bias=False)
        self.fuse_bn = WarmStartBatchNorm1d(dim)
        self.act = nn.LeakyReLU(0.2) if activation == "leaky_relu" else nn.ReLU()
        self.extra = nn.Linear(dim, dim * (num_prompts - 1)) if num_prompts > 1 else None
        self.num_prompts = num_prompts

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, N, D = tokens.shape
        feats, x = [], tokens
        for conv in self.convs:
            x = conv(x)
            feats.append(x)
        f = self.fuse(torch.cat(feats, dim=-1))
        f = self.act(self.fuse_bn(f.reshape(B * N, D)).reshape(B, N, D))
        prompt = f.max(dim=1, keepdim=True).values  # (B, 1, D)
        if self.extra is not None:
            prompt = torch.cat([prompt, self.extra(prompt).reshape(B, self.num_prompts - 1, D)], dim=1)
        return prompt
