"""A linear layer's routed LoRA inventory (Poly / MHR)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RoutedLora(nn.Module):
    """``scaling * B_t A_t dropout(x)`` with ``A_t, B_t`` the task's mix of an inventory of K LoRA adapters.

    ``lora_A`` (K, r, in) is kaiming-uniform, ``lora_B`` (K, out, r) zero, so the branch starts at zero. The routing
    ``Z`` (num_tasks, heads, K) mixes rank slice ``j`` (of r/heads ranks) of every adapter with the weights
    ``sigmoid(Z[t, j]) / sum_k sigmoid(Z[t, j, k])``. With no routing (``Z`` is None, MHR-mu) the inventory holds one
    adapter that is used as it is. The inventory is a trainable Parameter or, when frozen (MHR-z), a persistent
    buffer, so it is saved with the adapter either way.
    """

    def __init__(self, in_features: int, out_features: int, r: int, num_skills: int, heads: int, num_tasks: int,
                 scaling: float, dropout: float = 0.0, routed: bool = True, trainable_inventory: bool = True,
                 routing_init: float = 1e-3) -> None:
        super().__init__()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout)
        self.task_id = 0
        a = torch.empty(num_skills, r, in_features)
        for k in range(num_skills):
            nn.init.kaiming_uniform_(a[k], a=math.sqrt(5))
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
        s = torch.sigmoid(self.routing[t])
        return s / s.sum(dim=-1, keepdim=True)

    def mixed(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's adapter: A (r, in) and B (out, r), every rank slice mixed by its head's weights."""
        if self.routing is None:
            return self.lora_A[0], self.lora_B[0]
        w = self.routing_weights(task_id).to(self.lora_A.dtype)  # (h, K)
        K, h, r = self.num_skills, self.heads, self.r
        a = torch.einsum("hk,khsi->hsi", w, self.lora_A.reshape(K, h, r // h, self.in_features))
        b = torch.einsum("hk,kohs->ohs", w, self.lora_B.reshape(K, self.out_features, h, r // h))
        return a.reshape(r, self.in_features), b.reshape(self.out_features, r)

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
        """Route each of ``heads`` rank slices separately, starting from the current single-head routing (exact)."""
        if self.routing is None or self.heads != 1:
            raise ValueError(f"only a single-head routing can be expanded, this one has {self.heads} heads")
        if self.r % heads:
            raise ValueError(f"rank {self.r} is not divisible by {heads} heads")
        self.routing = nn.Parameter(self.routing.detach().expand(-1, heads, -1).clone())

    def average_inventory(self) -> None:
        """MHR-mu: replace the inventory by its average (one trainable adapter) and drop the routing."""
        self._set_inventory(self.lora_A.mean(dim=0, keepdim=True), self.lora_B.mean(dim=0, keepdim=True), True)
        self.routing = None

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, skills={self.num_skills}, "
                f"heads={self.heads}, tasks={self.num_tasks}, scaling={self.scaling}")
