"""GAPrompt's per-forward state, its adapter, and prompt propagation (``models/prompt_MAE.py`` of the release)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.models.batchnorm import WarmStartBatchNorm1d
from pointpeft.ops import farthest_point_sample, gather_points, knn_query
from pointpeft.peft.point_prompts import inverse_distance_interpolate
from pointpeft.utils.modules import TransientState

#: prompt propagation's fixed weights (released): neighbourhood max + 0.3 x centre token, tokens + 0.3 x interpolation
CENTER_WEIGHT = 0.3
PROPAGATE_WEIGHT = 0.3
PROPAGATE_NEIGHBORS = 64  # inverse-distance interpolation over the 64 nearest level-2 centres (eps 1e-8)


class GAPromptState(TransientState):
    """What one forward computes once and every block reads: the shape code, the patch centres and their level-2
    grouping (FPS of G/2 centres, each with its ``group_size / 2`` nearest centres), the token prompts' positions.

    Tensors hold the last forward's autograd graph, so copies and pickles drop them (a forward recomputes them).
    """

    _TRANSIENT = ("shape", "centers", "level2_centers", "level2_index", "level2_knn", "token_pos")

    def __init__(self) -> None:
        self.clear()
        self.reset_shift_stats()

    def reset_shift_stats(self) -> None:
        """Evaluation statistics of the point shift: summed |shift| and |x| over the points seen in eval mode."""
        self.shift_abs: torch.Tensor | float = 0.0
        self.point_abs: torch.Tensor | float = 0.0

    def record_shift(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """Sums stay on the device (no host sync a forward); ``shift_relative`` reads them once per evaluation."""
        self.shift_abs = self.shift_abs + (after - before).detach().abs().sum()
        self.point_abs = self.point_abs + before.detach().abs().sum()

    def shift_relative(self) -> float | None:
        """Mean |shift| / mean |coordinate| of the points recorded since the last reset; None before any."""
        point_abs = float(self.point_abs)
        return float(self.shift_abs) / point_abs if point_abs > 0 else None

    def clear(self) -> None:
        self.shape: torch.Tensor | None = None  # (B, 1, D)
        self.centers: torch.Tensor | None = None  # (B, G, 3)
        self.level2_centers: torch.Tensor | None = None  # (B, G/2, 3)
        self.level2_index: torch.Tensor | None = None  # (B, G/2) indices of the level-2 centres among the G
        self.level2_knn: torch.Tensor | None = None  # (B, G/2, K2) their nearest centres
        self.token_pos: torch.Tensor | None = None  # (T, D)

    def set_centers(self, centers: torch.Tensor, group_size: int, fps_backend: str) -> None:
        G = centers.shape[1]
        self.centers = centers
        self.level2_index = farthest_point_sample(centers, max(1, G // 2), backend=fps_backend)
        self.level2_centers = gather_points(centers, self.level2_index)
        self.level2_knn = knn_query(min(max(1, group_size // 2), G), centers, self.level2_centers)



class GAPromptAdapter(nn.Module):
    """The adapter after every block: ``adapter_scale * up(dropout(quick_gelu(down(LayerNorm(x)))))``.

    Weights start with PyTorch's default (kaiming-uniform) and biases N(0, 1e-6), as released: not zero at
    initialisation.
    """

    def __init__(self, dim: int, r: int = 16, scale: float = 0.7, dropout: float = 0.1) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.ln1 = nn.Linear(dim, r)
        self.ln2 = nn.Linear(r, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        for lin in (self.ln1, self.ln2):
            nn.init.normal_(lin.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(self.layer_norm(x))
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        return self.ln2(self.dropout(h)) * self.scale


def out_transform(dim: int) -> nn.Sequential:
    """BatchNorm + GELU on the max-pooled level-2 neighbourhoods (the released ``out_transform``)."""
    return nn.Sequential(WarmStartBatchNorm1d(dim), nn.GELU())


def propagate_prompts(x: torch.Tensor, state: GAPromptState, block: nn.Module, gather: str) -> torch.Tensor:
    """Prompt propagation on x (B, 1 + [T prompts +] G, D): the G patch tokens (the last G) get
    ``+ 0.3 * interp(out_transform(max over each level-2 neighbourhood of 2 x tokens) + 0.3 * centre token)``.

    The neighbourhood tokens are ``t + drop_path(t)`` (2t in eval), with the block's own stochastic depth.
    ``gather``: ``per_sample`` reads every cloud's own patch tokens; ``flat`` reproduces the released indexing,
    ``tokens.reshape(B * (T + G), D)[index + b * G]``, which with T prompts inside the sequence reads tokens shifted
    by T and, for clouds after the first, tokens of the previous cloud in the batch.
    """
    B, _, D = x.shape
    rest = x[:, 1:]
    G = state.centers.shape[1]
    knn, index = state.level2_knn, state.level2_index
    G2, K2 = knn.shape[1], knn.shape[2]
    if gather == "flat" and rest.shape[1] != G:
        T = rest.shape[1]
        base = torch.arange(B, device=x.device) * G
        flat = rest.reshape(B * T, D)
        nb = flat[(knn + base.view(B, 1, 1)).reshape(-1)].view(B * G2, K2, D)
        center_tok = flat[(index + base.view(B, 1)).reshape(-1)].view(B, G2, D)
    else:
        patches = rest[:, -G:]
        nb = gather_points(patches, knn).view(B * G2, K2, D)
        center_tok = gather_points(patches, index)
    nb = block.drop_path(nb) + nb
    pooled = block.out_transform(nb.max(dim=1).values).view(B, G2, D) + CENTER_WEIGHT * center_tok
    up = inverse_distance_interpolate(state.centers, state.level2_centers, pooled, PROPAGATE_NEIGHBORS, 1e-8)
    patches = rest[:, -G:] + PROPAGATE_WEIGHT * up.to(x.dtype)
    return torch.cat([x[:, :1], rest[:, :-G], patches], dim=1)


def token_prompts(block: nn.Module, state: GAPromptState, batch: int, dropout: float,
                  shape_scale: float) -> torch.Tensor:
    """(B, T, D): ``dropout(prompt_embeddings) [+ shape_scale * shape code] + pos_embed(prompt_cor)``."""
    p = F.dropout(block.prompt_embeddings.unsqueeze(0).expand(batch, -1, -1), dropout, block.training)
    p = p + state.token_pos
    return p + shape_scale * state.shape if state.shape is not None else p
