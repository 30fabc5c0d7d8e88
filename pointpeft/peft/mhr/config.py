"""MHR options: multi-head adapter routing over an inventory of LoRA adapters (Caccia et al., 2023; Poly: Ponti et al.).

Every adapted linear layer holds an inventory of ``num_skills`` LoRA adapters (rank ``r``) and a routing matrix
Z (num_tasks x heads x num_skills); the task's mixing weights are ``sigmoid(Z) / sum_k sigmoid(Z)`` (Polytropon's
normalised sigmoid; ``relaxed_bernoulli`` adds its training noise). Modes:

* ``poly``: one head, whole adapters are mixed; routing and inventory train;
* ``mhr``: every adapter is split into ``heads`` heads, each routed separately: as mttl's ``SkilledLoRA``, head j is
  slice j of A's input features and of B's output features (``head_split: rank`` slices the rank instead);
* ``mhr_z``: as mhr, but only the routing trains (the inventory is kept as saved, non-trainable buffers) - few-shot
  adaptation of a multi-task inventory;
* ``mhr_mu``: no routing; the inventory is averaged into a single LoRA adapter that trains. mttl keeps the K skills
  under a uniform selector instead: the same output, and under AdamW (our recipe) the same steps up to Adam's eps
  (every skill gets the same gradient / K, which Adam's normalisation cancels); with plain SGD ours moves K x farther.

The routing logits train with their own optimiser options (``routing_lr`` 0.1, ``routing_weight_decay`` 0, mttl's
``module_logits_learning_rate`` group), declared by the method (``Mhr.param_group_options``).

The current task is set with :func:`pointpeft.peft.mhr.set_task` (default 0, so a single-task run learns one mix).

Parameter budget of the defaults on Point-MAE (qkv, D=384, r=8, 4 skills, 4 heads, 1 task): 12 * (4 * (8*384 +
1152*8) + 1*4*4) = 12 * 49,168 = 590,016 + CLS/cls_pos 768 + head 273,960 (40 classes) = 864,744 trainable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pointpeft.peft.base import PeftConfig
from pointpeft.peft.lora.config import check_lora_options

MODES = ("poly", "mhr", "mhr_z", "mhr_mu")
HEAD_SPLITS = ("features", "rank")
INITS = ("mttl", "kaiming")


@dataclass
class MhrConfig(PeftConfig):
    """``type: mhr``: routed inventories of LoRA adapters on the blocks' target linears."""

    mode: str = "mhr"  # poly | mhr | mhr_z | mhr_mu (see the module docstring)
    num_skills: int = 4  # K: LoRA adapters in every layer's inventory
    heads: int = 4  # h: routing heads (slices of the rank) in mhr / mhr_z; poly uses 1
    num_tasks: int = 1  # rows of the routing matrix (add_task grows it)
    r: int = 8  # rank of every inventory adapter
    head_split: str = "features"  # features (mttl: in/out feature slices, full rank) | rank (rank slices)
    init: str = "mttl"  # A uniform in +-1/sqrt(3 in) (mttl) | kaiming (nn.Linear's +-1/sqrt(in))
    routing_lr: float | None = 0.1  # lr of the routing logits (mttl's module_logits_learning_rate); None: base lr
    routing_weight_decay: float = 0.0  # weight decay of the routing logits (mttl's module_logits group: none)
    relaxed_bernoulli: bool = False  # training weights sampled from RelaxedBernoulli(1, Z) (mttl/Polytropon option)
    alpha: float = 16.0  # the update is scaled by alpha / r, as LoRA
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: list[str] = field(default_factory=lambda: ["qkv"])  # any of qkv, proj, fc1, fc2
    routing_init: float = 1e-3  # Z starts uniform in [-routing_init, routing_init] (an almost even mix)

    def validate(self) -> None:
        self.require_choice("mode", MODES)
        self.require_positive_int("num_skills", "heads", "num_tasks", "r")
        self.require_choice("head_split", HEAD_SPLITS)
        self.require_choice("init", INITS)
        if self.mode in ("mhr", "mhr_z") and self.head_split == "rank" and self.r % self.heads:
            raise ValueError(f"r ({self.r}) must be divisible by heads ({self.heads}): heads are slices of the rank")
        if self.routing_lr is not None and (isinstance(self.routing_lr, bool) or not self.routing_lr > 0):
            raise ValueError(f"routing_lr must be > 0 or null, got {self.routing_lr!r}")
        if isinstance(self.routing_weight_decay, bool) or not self.routing_weight_decay >= 0:
            raise ValueError(f"routing_weight_decay must be >= 0, got {self.routing_weight_decay!r}")
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
