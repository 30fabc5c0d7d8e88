"""MoSA's earlier variant (``style: linear``): one dense linear bottleneck on fc2's output whose four tensors are split
element by element into disjoint sparse modules by saved masks. The released MoSA is :mod:`pointpeft.peft.mosa.experts`.

The modules share one set of dense tensors, so the merged adapter IS the dense tensors: merging the modules costs
nothing, and training memory is that of one adapter. The assignment of every element to its module (and, for the
hierarchical strategy, of every bottleneck channel to its group) is a persistent integer buffer, saved with the
adapter, so a reloaded adapter has the same split.

Two training views of a drawn module (``sparse_view``):

* ``module`` (default; the official code's view of an expert): the module is a whole adapter made of its own trained
  elements over the shared initial values (``init + (W - init) * mask``); a gradient reaches only its elements (the official code masks
  the gradients of full-size experts), but all modules share one optimiser state. The merged adapter is the mean of the modules (``module_merge: mean``, the
  official ``merge('add')``: ``init + (W - init) / num_modules``) or their sum (``sum``: ``W``).
* ``masked``: elements outside the drawn modules are zero, rescaled by modules/active (DropConnect); kept for
  comparison: with 1 of 4 modules each input->output path survives 1 time in 16 at 16x, far noisier to train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: the adapter's tensors, each with its own element -> module assignment
TENSORS = ("down_weight", "down_bias", "up_weight", "up_bias")


class SparseAdapter(nn.Module):
    """``scale * up(act(down(x)))`` (up zero-initialised) trained as ``num_modules`` disjoint sparse modules."""

    def __init__(self, dim: int, r: int, num_modules: int, num_active: int, scale: float = 1.0,
                 activation: str = "none", rescale: bool = True, num_groups: int = 1, num_active_groups: int = 1,
                 seed: int = 0, sparse_view: str = "module", module_merge: str = "mean") -> None:
        super().__init__()
        self.dim, self.r = dim, r
        self.num_modules, self.num_active = num_modules, num_active
        self.num_groups, self.num_active_groups = num_groups, num_active_groups
        self.scale, self.activation, self.rescale = float(scale), activation, rescale
        self.sparse_view, self.module_merge = sparse_view, module_merge
        self.down_weight = nn.Parameter(torch.empty(r, dim))
        self.down_bias = nn.Parameter(torch.zeros(r))
        self.up_weight = nn.Parameter(torch.zeros(dim, r))  # zero: the adapter adds nothing at first
        self.up_bias = nn.Parameter(torch.zeros(dim))
        nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))
        for name in TENSORS:  # the shared starting point of every module (``module`` view); saved with the adapter
            self.register_buffer(f"{name}_init", getattr(self, name).detach().clone())
        g = torch.Generator().manual_seed(seed)
        for name in TENSORS:
            shape = getattr(self, name).shape
            self.register_buffer(f"{name}_module", torch.randint(num_modules, shape, generator=g, dtype=torch.uint8))
        # hierarchical level: bottleneck channel -> group (balanced: a seeded permutation of 0..r-1 modulo groups)
        self.register_buffer("channel_group", (torch.randperm(r, generator=g) % num_groups).to(torch.uint8))
        #: modules (and groups) the next training forward uses; None draws them at random
        self.route: tuple[list[int], list[int] | None] | None = None

    # -- masks ---------------------------------------------------------------------------------------------------
    def module_mask(self, name: str, modules: list[int] | torch.Tensor) -> torch.Tensor:
        """Boolean mask of tensor ``name`` covering the elements of ``modules``."""
        active = torch.zeros(self.num_modules, dtype=torch.bool)
        active[torch.as_tensor(modules, dtype=torch.long)] = True
        return active.to(self.down_weight.device)[getattr(self, f"{name}_module").long()]

    def group_mask(self, groups: list[int] | torch.Tensor) -> torch.Tensor:
        """Boolean (r,) mask of the bottleneck channels in ``groups``."""
        active = torch.zeros(self.num_groups, dtype=torch.bool)
        active[torch.as_tensor(groups, dtype=torch.long)] = True
        return active.to(self.down_weight.device)[self.channel_group.long()]

    def module_tensors(self, n: int) -> dict[str, torch.Tensor]:
        """The tensors of sparse module ``n`` alone (zeros outside its mask)."""
        return {name: getattr(self, name) * self.module_mask(name, [n]) for name in TENSORS}

    def draw_route(self) -> tuple[list[int], list[int] | None]:
        """Random active modules (and channel groups when hierarchical) for one training forward."""
        modules = torch.randperm(self.num_modules)[: self.num_active].tolist()
        groups = torch.randperm(self.num_groups)[: self.num_active_groups].tolist() if self.num_groups > 1 else None
        return modules, groups

    def sparse_tensors(self, modules: list[int], groups: list[int] | None) -> dict[str, torch.Tensor]:
        """The adapter's tensors as the drawn ``modules`` (and channel ``groups``) see them in training."""
        out = {}
        ch = self.group_mask(groups) if groups is not None else None
        masked = self.sparse_view == "masked"
        f_mod = self.num_modules / len(modules) if (self.rescale and masked) else 1.0
        f_grp = self.num_groups / len(groups) if (self.rescale and groups is not None) else 1.0
        for name in TENSORS:
            t = getattr(self, name)
            mask = self.module_mask(name, modules).to(t.dtype)
            if masked:  # zeros outside the drawn modules
                t = t * (mask * f_mod)
            else:  # the module's own changes over the shared initial values
                init = getattr(self, f"{name}_init").to(t.dtype)
                t = init + (t - init) * mask
            if ch is not None and name != "up_bias":
                c = ch.to(t.dtype) * f_grp
                t = t * (c.unsqueeze(1) if name == "down_weight" else c)  # channels: rows of down, columns of up
            out[name] = t
        return out

    def dense_tensors(self) -> dict[str, torch.Tensor]:
        """The merged adapter used for evaluation and folding."""
        if self.sparse_view == "masked" or self.module_merge == "sum":
            return {name: getattr(self, name) for name in TENSORS}
        out = {}
        for name in TENSORS:  # mean of the modules: each element's change belongs to one module of num_modules
            t, init = getattr(self, name), getattr(self, f"{name}_init")
            out[name] = init.to(t.dtype) + (t - init.to(t.dtype)) / self.num_modules
        return out

    # -- forward / merge -----------------------------------------------------------------------------------------
    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h) if self.activation == "gelu" else F.relu(h) if self.activation == "relu" else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            route = self.route if self.route is not None else self.draw_route()
            t = self.sparse_tensors(*route)
        else:
            t = self.dense_tensors()
        h = self._act(F.linear(x, t["down_weight"], t["down_bias"]))
        return F.linear(h, t["up_weight"], t["up_bias"]) * self.scale

    def fold_into(self, linear: nn.Linear) -> None:
        """Fold the dense linear adapter applied to ``linear``'s output into its weights (``activation: none``)."""
        if self.activation != "none":
            raise ValueError(f"a {self.activation} adapter cannot be folded into a linear layer")
        with torch.no_grad():
            t = self.dense_tensors()
            ud = self.scale * (t["up_weight"] @ t["down_weight"])  # (D, D)
            b_extra = self.scale * (t["up_weight"] @ t["down_bias"] + t["up_bias"])
            w = linear.weight
            new_w = w + (ud @ w.to(ud.dtype)).to(w.dtype)
            if linear.bias is not None:
                linear.bias.add_((ud @ linear.bias.to(ud.dtype) + b_extra).to(linear.bias.dtype))
            linear.weight.copy_(new_w)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, r={self.r}, num_modules={self.num_modules}, num_active={self.num_active}, "
                f"num_groups={self.num_groups}, activation={self.activation}, sparse_view={self.sparse_view}, module_merge={self.module_merge}")
