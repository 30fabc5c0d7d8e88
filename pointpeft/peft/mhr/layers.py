"""A linear layer's routed LoRA inventory (Poly / MHR)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: mttl's global_vars.EPS in the normalised sigmoid
EPS = 1e-12


def check_heads(head_split: str, heads: int, r: int, in_features: int, out_features: int) -> None:
    """ValueError naming ``heads`` when the sliced dimension(s) do not divide into ``heads`` equal slices."""
    dims = {"r": r} if head_split == "rank" else {"in_features": in_features, "out_features": out_features}
    for name, n in dims.items():
        if n % heads:
            raise ValueError(f"heads ({heads}) must divide {name} ({n}): head_split {head_split!r} slices it")


class RoutedLora(nn.Module):
    """``scaling * B_t A_t dropout(x)`` with ``A_t, B_t`` the task's mix of an inventory of K LoRA adapters.

    ``lora_A`` (K, r, in) is uniform in ``+-1/sqrt(3 in)`` (mttl's ``LoRA.reset_parameters``; ``init: kaiming`` gives
    ``nn.Linear``'s ``+-1/sqrt(in)``), ``lora_B`` (K, out, r) zero, so the branch starts at zero. The routing ``Z``
    (num_tasks, heads, K) mixes head ``j`` of every adapter with the weights ``sigmoid(Z[t, j]) / sum_k sigmoid(Z[t,
    j, k])``. A head is, as in mttl's ``SkilledLoRA`` (``head_split: features``), slice ``j`` of A's input features and
    of B's output features over the full rank; ``head_split: rank`` slices the rank instead (r/heads ranks a head).
    ``relaxed_bernoulli`` samples the training weights from RelaxedBernoulli(1, Z) instead of ``sigmoid(Z)``
    (Polytropon's / mttl's option). With no routing (``Z`` is None, MHR-mu) the inventory holds one adapter that is
    used as it is. The inventory is a trainable Parameter or, when frozen (MHR-z), a persistent buffer, so it is
    saved with the adapter either way.
    """

    def __init__(self, in_features: int, out_features: int, r: int, num_skills: int, heads: int, num_tasks: int,
                 scaling: float, dropout: float = 0.0, routed: bool = True, trainable_inventory: bool = True,
                 routing_init: float = 1e-3, head_split: str = "features", init: str = "mttl",
                 relaxed_bernoulli: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout)
        self.head_split, self.relaxed_bernoulli = head_split, bool(relaxed_bernoulli)
        self.task_id = 0
        bound = 1.0 / math.sqrt((3.0 if init == "mttl" else 1.0) * in_features)
        a = torch.empty(num_skills, r, in_features).uniform_(-bound, bound)
        self._set_inventory(a, torch.zeros(num_skills, out_features, r), trainable_inventory)
        self.routing: nn.Parameter | None = None
        if routed:
            self.routing = nn.Parameter(torch.empty(num_tasks, heads, num_skills).uniform_(-routing_init, routing_init))

    # -- inventory storage ---------------------------------------------------------------------------------------
    def _set_inventory(self, a: torch.Tensor, b: torch.Tensor, trainable: bool) -> None:
        for name, t in (("lora_A", a), ("lora_B", b)):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            if trainable:
                self.register_parameter(name, nn.Parameter(t.detach().clone()))
            else:
                self.register_buffer(name, t.detach().clone())

    @property
    def inventory_trainable(self) -> bool:
        return "lora_A" in self._parameters

    def set_inventory_trainable(self, trainable: bool) -> None:
        if trainable != self.inventory_trainable:
            self._set_inventory(self.lora_A, self.lora_B, trainable)

    @property
    def num_skills(self) -> int:
        return self.lora_A.shape[0]

    @property
    def heads(self) -> int:
        return self.routing.shape[1] if self.routing is not None else 1

    @property
    def num_tasks(self) -> int:
        return self.routing.shape[0] if self.routing is not None else 1

    # -- routing -------------------------------------------------------------------------------------------------
    def routing_weights(self, task_id: int | None = None) -> torch.Tensor:
        """(heads, K) mixing weights of ``task_id`` (default: the current task); rows sum to 1."""
        if self.routing is None:
            return torch.ones(1, 1, device=self.lora_A.device, dtype=self.lora_A.dtype)
        t = self.task_id if task_id is None else task_id
        if self.training and self.relaxed_bernoulli:
            s = torch.distributions.RelaxedBernoulli(torch.tensor(1.0, device=self.routing.device),
                                                     logits=self.routing[t]).rsample()
        else:
            s = torch.sigmoid(self.routing[t])
        return s / (s.sum(dim=-1, keepdim=True) + EPS)

    def mixed(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's adapter: A (r, in) and B (out, r), every rank slice mixed by its head's weights."""
        if self.routing is None:
            return self.lora_A[0], self.lora_B[0]
        w = self.routing_weights(task_id).to(self.lora_A.dtype)  # (h, K)
        K, h, r, i, o = self.num_skills, self.heads, self.r, self.in_features, self.out_features
        if self.head_split == "rank":  # head j: ranks j*r/h .. (j+1)*r/h of A and B
            a = torch.einsum("hk,khsi->hsi", w, self.lora_A.reshape(K, h, r // h, i))
            b = torch.einsum("hk,kohs->ohs", w, self.lora_B.reshape(K, o, h, r // h))
            return a.reshape(r, i), b.reshape(o, r)
        # mttl: head j mixes input features j*in/h .. of A and output features j*out/h .. of B, all ranks
        a = torch.einsum("hk,krhi->rhi", w, self.lora_A.reshape(K, r, h, i // h))
        b = torch.einsum("hk,khor->hor", w, self.lora_B.reshape(K, h, o // h, r))
        return a.reshape(r, i), b.reshape(o, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.mixed()
        return F.linear(F.linear(self.dropout(x), a), b) * self.scaling

    def delta_weight(self, task_id: int | None = None) -> torch.Tensor:
        """The dense update ``scaling * B_t @ A_t`` (out, in) of a task, for merging."""
        a, b = self.mixed(task_id)
        return self.scaling * (b @ a)

    # -- changes for few-shot adaptation -------------------------------------------------------------------------
    def add_task(self, init: str | int = "uniform", routing_init: float = 1e-3) -> int:
        """Grow Z by one task row: ``uniform`` (an even mix), ``mean`` (average of the rows) or a task id to copy."""
        if self.routing is None:
            raise ValueError("this layer has no routing (mhr_mu)")
        z = self.routing.detach()
        if init == "uniform":
            row = torch.empty_like(z[:1]).uniform_(-routing_init, routing_init)
        elif init == "mean":
            row = z.mean(dim=0, keepdim=True)
        elif isinstance(init, int) and not isinstance(init, bool) and 0 <= init < z.shape[0]:
            row = z[init : init + 1].clone()
        else:
            raise ValueError(f"add_task init must be 'uniform', 'mean' or an existing task id, got {init!r}")
        self.routing = nn.Parameter(torch.cat([z, row], dim=0))
        return self.routing.shape[0] - 1

    def expand_heads(self, heads: int) -> None:
        """Route each of ``heads`` heads separately, starting from the current single-head routing (exact)."""
        if self.routing is None or self.heads != 1:
            raise ValueError(f"only a single-head routing can be expanded, this one has {self.heads} heads")
        check_heads(self.head_split, heads, self.r, self.in_features, self.out_features)
        self.routing = nn.Parameter(self.routing.detach().expand(-1, heads, -1).clone())

    def average_inventory(self) -> None:
        """MHR-mu: replace the inventory by its average (one trainable adapter) and drop the routing."""
        self._set_inventory(self.lora_A.mean(dim=0, keepdim=True), self.lora_B.mean(dim=0, keepdim=True), True)
        self.routing = None

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, skills={self.num_skills}, "
                f"heads={self.heads}, head_split={self.head_split}, tasks={self.num_tasks}, scaling={self.scaling}")
