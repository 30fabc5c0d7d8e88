"""MHR options: multi-head adapter routing over an inventory of LoRA adapters (Caccia et al., 2023; Poly: Ponti et al.).

Every adapted linear layer holds an inventory of ``num_skills`` LoRA adapters (rank ``r``) and a routing matrix
Z (num_tasks x heads x num_skills); the task's mixing weights are ``sigmoid(Z) / sum_k sigmoid(Z)`` (Polytropon's
normalised sigmoid, without its Gumbel noise). Modes:

* ``poly``: one head, whole adapters are mixed; routing and inventory train;
* ``mhr``: every adapter's rank is split into ``heads`` slices, each routed separately; routing and inventory train;
* ``mhr_z``: as mhr, but only the routing trains (the inventory is kept as saved, non-trainable buffers) - few-shot
  adaptation of a multi-task inventory;
* ``mhr_mu``: no routing; the inventory is averaged into a single LoRA adapter that trains.

The current task is set with :func:`pointpeft.peft.mhr.set_task` (default 0, so a single-task run learns one mix).

Parameter budget of the defaults on Point-MAE (qkv, D=384, r=8, 4 skills, 4 heads, 1 task): 12 * (4 * (8*384 +
1152*8) + 1*4*4) = 12 * 49,168 = 590,016 + CLS/cls_pos 768 + head 273,960 (40 classes) = 864,744 trainable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pointpeft.peft.base import PeftConfig
from pointpeft.peft.lora.config import check_lora_options

MODES = ("poly", "mhr", "mhr_z", "mhr_mu")


@dataclass
class MhrConfig(PeftConfig):
    """``type: mhr``: routed inventories of LoRA adapters on the blocks' target linears."""

    mode: str = "mhr"  # poly | mhr | mhr_z | mhr_mu (see the module docstring)
    num_skills: int = 4  # K: LoRA adapters in every layer's inventory
    heads: int = 4  # h: routing heads (slices of the rank) in mhr / mhr_z; poly uses 1
    num_tasks: int = 1  # rows of the routing matrix (add_task grows it)
    r: int = 8  # rank of every inventory adapter (must be divisible by heads)
    alpha: float = 16.0  # the update is scaled by alpha / r, as LoRA
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: list[str] = field(default_factory=lambda: ["qkv"])  # any of qkv, proj, fc1, fc2
    routing_init: float = 1e-3  # Z starts uniform in [-routing_init, routing_init] (an almost even mix)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        self.require_positive_int("num_skills", "heads", "num_tasks", "r")
        if self.mode in ("mhr", "mhr_z") and self.r % self.heads:
            raise ValueError(f"r ({self.r}) must be divisible by heads ({self.heads}): heads are slices of the rank")
        self.target_modules = check_lora_options(self.dropout, self.target_modules)
        if self.routing_init < 0:
            raise ValueError(f"routing_init must be >= 0, got {self.routing_init!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @property
    def routing_heads(self) -> int:
        """Heads of the routing matrix in this mode (poly routes whole adapters; mhr_mu has no routing)."""
        return 1 if self.mode in ("poly", "mhr_mu") else self.heads

    @property
    def inventory_size(self) -> int:
        return 1 if self.mode == "mhr_mu" else self.num_skills
