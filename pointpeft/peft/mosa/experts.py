"""The released MoSA adapter (Theia-4869/MoSA ``vit_mosa.py``): a bottleneck whose projections are split into experts.

A split projection (:class:`ExpertLinear`) holds ``num_experts`` experts that all start from the same initial
weight (the official code deep-copies expert 0). Expert ``k`` trains only its own elements: a random, exactly
balanced partition of the weight (``Pruner.divide(mode="all")``: element ranks of a random score, cut into K equal
ranges). Biases are not split by default (``MODEL.ADAPTER.BIAS: True``): each expert trains its whole bias.

Each expert's trained values are their own Parameters (``weight_k`` holds expert k's elements as a (1, n_k) row,
``bias_k`` its bias), so an expert has its own optimiser state and is stepped only when a forward drew it (the
others have no gradient), as with the official per-expert ``nn.Linear`` modules; nothing is stored twice and the
trainable count is that of one dense adapter plus the K biases. The merged projection is the mean of the experts
(``merge('add')``), used at evaluation and by :func:`merged_adapter`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def balanced_partition(numel: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """Expert id of each of ``numel`` elements: a random order cut into ``parts`` ranges of equal size (+-1)."""
    order = torch.randperm(numel, generator=generator)
    bounds = torch.tensor([(i * numel) // parts for i in range(1, parts)])
    owner = torch.empty(numel, dtype=torch.long)
    owner[order] = torch.bucketize(torch.arange(numel), bounds, right=True)
    return owner


class ExpertLinear(nn.Module):
    """A linear projection, dense (``num_experts == 1``) or split into experts over a shared initial weight."""

    def __init__(self, in_features: int, out_features: int, num_experts: int, init: str, split_bias: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.in_features, self.out_features, self.num_experts = in_features, out_features, num_experts
        self.split_bias = split_bias
        w = torch.zeros(out_features, in_features)
        if init == "kaiming":  # the official init: kaiming_uniform_(a=sqrt(5)), bias zero
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if num_experts == 1:
            self.weight = nn.Parameter(w)
            self.bias = nn.Parameter(torch.zeros(out_features))
            return
        self.register_buffer("weight_init", w)
        owner = balanced_partition(w.numel(), num_experts, generator)
        self.register_buffer("weight_owner", owner.to(torch.uint8 if num_experts < 256 else torch.int32))
        for k in range(num_experts):
            idx = (owner == k).nonzero().flatten()
            self.register_parameter(f"weight_{k}", nn.Parameter(w.flatten()[idx].unsqueeze(0).clone()))
            self.register_parameter(f"bias_{k}", nn.Parameter(torch.zeros(out_features)))
        if split_bias:
            self.register_buffer("bias_owner", balanced_partition(out_features, num_experts, generator).to(
                self.weight_owner.dtype))
        self.refresh_index()

    def refresh_index(self) -> None:
        """Cache every expert's element indices (non-persistent buffers: no host sync in a forward)."""
        owner = self.weight_owner.long().flatten()
        for k in range(self.num_experts):
            self.register_buffer(f"index_{k}", (owner == k).nonzero().flatten(), persistent=False)
        self._index_version = self.weight_owner._version

    def _index(self, k: int) -> torch.Tensor:
        if self.weight_owner._version != self._index_version:  # the split was written (a loaded adapter)
            self.refresh_index()
        return getattr(self, f"index_{k}")

    def expert(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``k``'s full weight and bias: its own trained elements over the shared initial values."""
        if self.num_experts == 1:
            return self.weight, self.bias
        w0 = self.weight_init.to(self.weight_0.dtype).flatten()
        w = w0.scatter(0, self._index(k), getattr(self, f"weight_{k}").flatten())
        b = getattr(self, f"bias_{k}")
        if self.split_bias:  # only its own bias elements move (from zero)
            b = b * (self.bias_owner.long() == k).to(b.dtype)
        return w.view(self.out_features, self.in_features), b

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of the experts (the official ``merge('add')``: sum of the expert modules / K)."""
        if self.num_experts == 1:
            return self.weight, self.bias
        ws, bs = zip(*(self.expert(k) for k in range(self.num_experts)), strict=True)
        return torch.stack(ws).mean(0), torch.stack(bs).mean(0)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
                f"split_bias={self.split_bias}")


class MosaAdapter(nn.Module):
    """``scale * up(dropout(act(down(LayerNorm(x)))))`` with down / up split into experts as ``share`` says.

    A training forward draws one down and one up expert (uniformly, independently; the official
    ``random.randint``), unless ``route`` fixes them; evaluation uses the merged (mean) projections. ``share: down``
    (the released scripts) keeps one dense down projection and splits only the up projection.
    """

    def __init__(self, dim: int, r: int, num_experts: int, share: str = "down", activation: str = "gelu",
                 scale: float = 0.1, dropout: float = 0.1, split_bias: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim, self.r, self.num_experts, self.share = dim, r, num_experts, share
        self.activation, self.scale, self.dropout = activation, float(scale), float(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.down = ExpertLinear(dim, r, 1 if share == "down" else num_experts, "kaiming", split_bias, g)
        self.up = ExpertLinear(r, dim, 1 if share == "up" else num_experts, "zeros", split_bias, g)
        #: (down expert, up expert) the next training forward uses; None draws them at random
        self.route: tuple[int, int] | None = None

    def draw_route(self) -> tuple[int, int]:
        a, b = torch.randint(self.num_experts, (2,)).tolist()
        return a, b

    def projections(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(down, up) weights and biases this forward uses: the drawn experts in training, the merged ones else."""
        if self.training:
            a, b = self.route if self.route is not None else self.draw_route()
            return self.down.expert(a if self.down.num_experts > 1 else 0), \
                self.up.expert(b if self.up.num_experts > 1 else 0)
        return self.down.merged(), self.up.merged()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (wd, bd), (wu, bu) = self.projections()
        h = F.linear(self.norm(x), wd, bd)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        h = F.dropout(h, self.dropout, self.training)
        return F.linear(h, wu, bu) * self.scale

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, r={self.r}, experts={self.num_experts}, share={self.share}, "
                f"activation={self.activation}, scale={self.scale}, dropout={self.dropout}")


class MergedAdapter(nn.Module):
    """A MoSA adapter after merging: one dense LayerNorm -> down -> act -> dropout -> up -> scale (non-linear, so it
    stays an adapter rather than folding into the backbone)."""

    def __init__(self, source: MosaAdapter) -> None:
        super().__init__()
        self.activation, self.scale, self.dropout = source.activation, source.scale, source.dropout
        self.norm = nn.LayerNorm(source.dim, eps=source.norm.eps)
        self.down = nn.Linear(source.dim, source.r)
        self.up = nn.Linear(source.r, source.dim)
        with torch.no_grad():
            self.norm.load_state_dict(source.norm.state_dict())
            for mine, theirs in ((self.down, source.down), (self.up, source.up)):
                w, b = theirs.merged()
                mine.weight.copy_(w)
                mine.bias.copy_(b)
        self.to(source.norm.weight.device, source.norm.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.norm(x))
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return self.up(F.dropout(h, self.dropout, self.training)) * self.scale
