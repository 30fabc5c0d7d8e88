"""MoSA options: a bottleneck adapter split into disjoint sparse modules, trained sparsely, merged after tuning.

The adapter sits after every FFN (on fc2's output, Houlsby's position): ``y = h + scale * up(act(down(h)))``,
``h = fc2(...)``. Its four tensors (down weight/bias, up weight/bias) are partitioned element by element into
``num_modules`` disjoint random masks (seeded). A training forward uses ``num_active`` randomly drawn modules; with
``sparse_view: module`` (default, as the official code) a module is its own trained elements over the shared initial
values and only its elements get gradients; ``sparse_view: masked`` zeroes the other elements instead (rescaled by
num_modules/num_active when ``rescale``: DropConnect). Evaluation and merging use all modules, i.e. the dense adapter. ``hierarchical: true`` adds a second, structured level: the bottleneck
channels are split into ``num_groups`` groups and a training forward also keeps only ``num_active_groups`` of them.

``activation: none`` (default) keeps the adapter linear, so ``merge`` folds the merged dense adapter into fc2's
weights (``W' = (I + s U D) W``): no inference cost at all. ``gelu``/``relu`` give the nonlinear standard adapter; it
is already one dense adapter at evaluation, but cannot be folded into the backbone, so ``merge`` refuses.

Parameter budget of the defaults on Point-MAE (D=384, r=16): 12 * (D*r + r + r*D + D) = 12 * 12,688 = 152,256
+ CLS/cls_pos 768 + head 273,960 (40 classes) = 426,984 trainable.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointpeft.peft.base import PeftConfig

ACTIVATIONS = ("none", "gelu", "relu")
SPARSE_VIEWS = ("module", "masked")
MODULE_MERGES = ("mean", "sum")


@dataclass
class MosaConfig(PeftConfig):
    """``type: mosa``: Mixture of Sparse Adapters after every FFN, with a consistency loss between two routes."""

    r: int = 16  # bottleneck width of the (dense) adapter
    scale: float = 1.0  # the adapter output is multiplied by this
    activation: str = "none"  # none (linear: mergeable into fc2) | gelu | relu (the nonlinear standard adapter)
    num_modules: int = 4  # disjoint sparse modules the adapter's weights are split into
    num_active: int = 1  # modules a training forward uses (drawn at random, per adapter, every forward)
    sparse_view: str = "module"  # module (own elements over the initial values) | masked (zeros elsewhere)
    module_merge: str = "mean"  # module view: the evaluated/merged adapter is the mean of the modules | their sum
    rescale: bool = True  # masked view: multiply the active weights by num_modules/num_active; groups likewise
    hierarchical: bool = False  # second sparsity level over the bottleneck channels (the hierarchical strategy)
    num_groups: int = 2  # hierarchical: bottleneck channel groups
    num_active_groups: int = 1  # hierarchical: channel groups a training forward keeps
    consistency_weight: float = 1.0  # weight of the symmetric KL between two routes' logits (0: one forward)
    seed: int = 0  # seed of the module / group assignments (the masks are also saved with the adapter)

    def validate(self) -> None:
        self.require_positive_int("r", "num_modules", "num_active", "num_groups", "num_active_groups")
        if self.sparse_view not in SPARSE_VIEWS:
            raise ValueError(f"sparse_view must be one of {list(SPARSE_VIEWS)}, got {self.sparse_view!r}")
        if self.module_merge not in MODULE_MERGES:
            raise ValueError(f"module_merge must be one of {list(MODULE_MERGES)}, got {self.module_merge!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if self.num_active > self.num_modules:
            raise ValueError(f"num_active ({self.num_active}) must be <= num_modules ({self.num_modules})")
        if self.hierarchical:
            if self.num_groups > self.r:
                raise ValueError(f"num_groups ({self.num_groups}) must be <= r ({self.r}): groups split the "
                                 "bottleneck channels")
            if self.num_active_groups > self.num_groups:
                raise ValueError(f"num_active_groups ({self.num_active_groups}) must be <= num_groups "
                                 f"({self.num_groups})")
        if not isinstance(self.consistency_weight, (int, float)) or self.consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {self.consistency_weight!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
