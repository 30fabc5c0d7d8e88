"""PointGST layers: the per-forward graph spectral bases and the Point Cloud Spectral Adapter (PCSA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.ops.graph_spectral import graph_spectral_basis, partition_spectral_bases
from pointpeft.ops.zorder import zorder_permutation
from pointpeft.utils.modules import TransientState


@dataclass
class SpectralBases:
    """One forward's bases: the global graph over all G centres and the local graphs over Z-order runs."""

    global_basis: torch.Tensor  # (B, G, G), eigenvectors as columns
    local_bases: torch.Tensor  # (B, G / local, local, local)
    order: torch.Tensor  # (B, G): the Z-order sort of the centres
    inverse: torch.Tensor  # (B, G): its inverse permutation

    @property
    def num_patches(self) -> int:
        return self.global_basis.shape[-1]


class SpectralBasisCache(TransientState):
    """Builds the bases from the tokenizer's centres once per forward (a tokenizer hook); every block's adapter reads
    them. A plain object shared by the adapters, so the bases are never part of a state dict (nor of a copy)."""

    _TRANSIENT = ("bases",)

    def __init__(self, local: int, distance_scale: str = "batch", zorder_wrap: bool = True) -> None:
        self.local = local
        self.distance_scale = distance_scale
        self.zorder_wrap = zorder_wrap
        self.bases: SpectralBases | None = None

    def build(self, centers: torch.Tensor) -> SpectralBases:
        order, inverse = zorder_permutation(centers, wrap=self.zorder_wrap)
        return SpectralBases(
            global_basis=graph_spectral_basis(centers, self.distance_scale),
            local_bases=partition_spectral_bases(centers, order, self.local, self.distance_scale),
            order=order,
            inverse=inverse,
        )

    def tokenizer_hook(self, model: nn.Module, out: Any) -> None:
        self.bases = self.build(out.centers)

    def current(self) -> SpectralBases:
        if self.bases is None:
            raise RuntimeError("PointGST: no spectral bases; the model's tokenizer hook did not run in this forward")
        return self.bases


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class SpectralAdapter(nn.Module):
    """PCSA: ``up(silu(h) + [h + T^-1 f_g(T h)] + [h + T_l^-1 f_l(T_l h)]) * scale`` with ``h = down(x)``; the
    bracketed terms only on the G patch tokens, ``f(z) = z' + silu(spectral(LN(z')))`` applied to ``z' = T h``.

    ``T`` is the global basis transform, ``T_l`` the local ones (tokens sorted along the Z-order curve, cut into
    runs, transformed, then unsorted). ``spectral`` (zero-initialised) is one linear shared by both branches, each
    with its own LayerNorm, as released; ``up`` is zero, so the adapter adds nothing at first.
    """

    def __init__(self, dim: int, rank: int, bases: SpectralBasisCache, transform: str = "released",
                 scale: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.spectral = nn.Linear(rank, rank)
        self.norm_global = nn.LayerNorm(rank)
        self.norm_local = nn.LayerNorm(rank)
        nn.init.xavier_uniform_(self.down.weight)  # down.bias keeps nn.Linear's default, as released
        for lin in (self.up, self.spectral):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.bases = bases
        self.transform = transform
        self.scale = float(scale)

    def _to_spectral(self, basis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return basis @ x if self.transform == "released" else basis.transpose(-2, -1) @ x

    def _from_spectral(self, basis: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return basis.transpose(-2, -1) @ y if self.transform == "released" else basis @ y

    def _filter(self, basis: torch.Tensor, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        z = self._to_spectral(basis.to(x.dtype), x)
        return self._from_spectral(basis.to(x.dtype), z + F.silu(self.spectral(norm(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bases = self.bases.current()
        g, local = bases.num_patches, bases.local_bases.shape[-1]
        h = self.down(x)
        patches = h[:, 1 : 1 + g]
        glob = self._filter(bases.global_basis, patches, self.norm_global)
        runs = _gather_rows(patches, bases.order).reshape(patches.shape[0], g // local, local, -1)
        loc = self._filter(bases.local_bases, runs, self.norm_local).reshape_as(patches)
        loc = _gather_rows(loc, bases.inverse)
        act = F.silu(h)
        mixed = torch.cat([act[:, :1], act[:, 1 : 1 + g] + glob + loc, act[:, 1 + g :]], dim=1)
        return self.up(mixed) * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.down.out_features}, transform={self.transform!r}, scale={self.scale}"
