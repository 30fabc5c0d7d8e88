"""MoSA options. The defaults are the released method (Theia-4869/MoSA: ``vit_mosa.py``, ``src/configs/config.py``,
``src/utils/pruner.py``, ``src/engine/trainer.py`` and its ``scripts/mosa``):

* ``style: adaptformer``: an adapter parallel to the FFN on the residual stream (the FFN's pre-norm input), with its
  own LayerNorm (eps 1e-6), ``down -> GELU -> dropout 0.1 -> up``, output x 0.1, added to the block's output; r 64
  (``BOTTLENECK_SIZE``; the VTAB scripts use 16). ``style: pfeiffer``: the official Pfeiffer branch, sequential on
  the FFN output, LayerNorm + ReLU, no scale, no dropout;
* ``share: down`` (the scripts' ``SHARE=down``): one dense down projection; only the up projection is split into
  ``num_modules`` experts, each a whole projection over the shared initial values that trains its own exactly
  balanced share of the elements; biases are not split (``split_bias: false``: each expert trains its whole bias);
* a training forward draws one expert per split projection per block; the consistency term is the symmetric KL
  between two forwards with the target distribution detached in each half (``consistency_detach``, the official
  ``symmetric_KL_loss``); each expert has its own optimiser state and steps only when drawn;
* evaluation uses the mean of the experts (``merge('add')``); :func:`pointpeft.peft.mosa.merge_experts` turns it
  into one dense non-linear adapter (exact). Folding into the backbone needs a linear adapter, so ``merge`` refuses.

``style: linear`` is the earlier variant, kept as an option: a linear adapter on fc2's output (r 16, scale 1, no norm,
no dropout; set ``r: 16``, ``scale: 1``) whose four tensors are split element by element with random masks
(``sparse_view``, ``module_merge``, ``rescale``, ``hierarchical``, ``activation`` apply to it only); it folds into
fc2 (``merge``).

Parameter budget of the defaults on Point-MAE (D=384, r=64, 4 experts): 12 * (LN 768 + down 24,640 + up weight
24,576 + 4 up biases 1,536) = 12 * 51,520 = 618,240 + CLS/cls_pos 768 + head 273,960 (40 classes) = 892,968.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointpeft.peft.base import PeftConfig

STYLES = ("adaptformer", "pfeiffer", "linear")
SHARES = ("down", "up", "none")
ACTIVATIONS = ("none", "gelu", "relu")
SPARSE_VIEWS = ("module", "masked")
MODULE_MERGES = ("mean", "sum")


@dataclass
class MosaConfig(PeftConfig):
    """``type: mosa``: Mixture of Sparse Adapters at every FFN, with a consistency loss between two routes."""

    style: str = "adaptformer"  # adaptformer (parallel, LN, GELU) | pfeiffer (after the FFN, LN, ReLU) | linear
    r: int = 64  # bottleneck width (the official BOTTLENECK_SIZE; its VTAB scripts use 16)
    scale: float | None = None  # output multiplier; None: 0.1 (adaptformer), 1 (pfeiffer, linear)
    dropout: float | None = None  # dropout after the activation; None: 0.1 (adaptformer), 0 (pfeiffer, linear)
    share: str = "down"  # down (one dense down, experts split up) | up | none (both split)
    split_bias: bool = False  # false: each expert trains its whole bias (official BIAS: True); true: split too
    consistency_detach: bool = True  # each KL half's target distribution is detached (official symmetric_KL_loss)
    activation: str = "none"  # style linear only: none (mergeable into fc2) | gelu | relu
    num_modules: int = 4  # experts (EXPERT_NUM) / disjoint sparse modules of the linear style
    num_active: int = 1  # modules a training forward uses (1: the official draw; more only for style linear)
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
        self.require_choice("style", STYLES)
        self.require_choice("share", SHARES)
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, int | float)):
            raise ValueError(f"scale must be a number or null, got {self.scale!r}")
        if self.dropout is not None:
            self.require_probability("dropout")
        if self.style == "linear":
            if self.dropout:
                raise ValueError("dropout must be 0 or null with style linear (the linear variant has none)")
        elif self.num_active != 1 or self.hierarchical or self.sparse_view != "module" or self.activation != "none":
            raise ValueError(f"num_active, hierarchical, sparse_view and activation are options of style linear; "
                             f"style {self.style!r} draws one expert per projection")
        self.require_choice("sparse_view", SPARSE_VIEWS)
        self.require_choice("module_merge", MODULE_MERGES)
        self.require_choice("activation", ACTIVATIONS)
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

    @property
    def adapter_scale(self) -> float:
        return float(self.scale) if self.scale is not None else (0.1 if self.style == "adaptformer" else 1.0)

    @property
    def adapter_dropout(self) -> float:
        return float(self.dropout) if self.dropout is not None else (0.1 if self.style == "adaptformer" else 0.0)
