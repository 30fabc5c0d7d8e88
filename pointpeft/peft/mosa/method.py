"""MoSA: a sparse-module adapter after every FFN, a consistency loss between two sampled routes, and merging."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.hooks import attach_adapter, detach_adapter
from pointpeft.peft.mosa.config import MosaConfig
from pointpeft.peft.mosa.layers import SparseAdapter


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``(KL(p_a || p_b) + KL(p_b || p_a)) / 2`` between two forwards' class distributions, mean over the batch."""
    la, lb = F.log_softmax(logits_a.float(), dim=-1), F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = F.kl_div(lb, la, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = F.kl_div(la, lb, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)


def sparse_adapters(model: nn.Module) -> list[SparseAdapter]:
    return [m for m in model.modules() if isinstance(m, SparseAdapter)]


class Mosa(PeftMethod):
    """Mixture of Sparse Adapters (sequential after every FFN's fc2)."""

    name = "mosa"
    config_class = MosaConfig
    zero_init_output = True  # up projections start at zero

    @property
    def mergeable(self) -> bool:  # type: ignore[override]
        """Only the linear adapter folds into fc2; a nonlinear one stays one dense adapter."""
        return self.config.activation == "none"

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        groups = (cfg.num_groups, cfg.num_active_groups) if cfg.hierarchical else (1, 1)
        for i, block in enumerate(spec.blocks):
            fc2 = block.mlp.fc2
            adapter = SparseAdapter(spec.embed_dim, cfg.r, cfg.num_modules, cfg.num_active, cfg.scale, cfg.activation,
                                    cfg.rescale, *groups, seed=cfg.seed + i,
                                    sparse_view=cfg.sparse_view, module_merge=cfg.module_merge)
            attach_adapter(fc2, adapter.to(fc2.weight.device, fc2.weight.dtype), "sequential")

    def training_forward(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Two forwards with independently drawn routes; the first's logits, plus the weighted symmetric KL."""
        from pointpeft.peft.inject import collect_aux_losses, unwrap

        logits = model(inputs)
        aux = collect_aux_losses(unwrap(model))
        w = float(self.config.consistency_weight)
        if w > 0 and model.training and torch.is_grad_enabled():
            other = model(inputs)
            aux["consistency_loss"] = w * symmetric_kl(logits, other)
        return logits, aux

    def merge(self, model: nn.Module, spec: Any) -> None:
        """Sum the sparse modules into the dense adapter and fold it into fc2: ``W' = (I + s U D) W``."""
        if not self.mergeable:
            raise ConfigError(f"mosa with activation {self.config.activation!r} cannot be merged into the backbone "
                              "(only activation: none is linear); it already evaluates as one dense adapter")
        fc2s = [b.mlp.fc2 for b in spec.blocks if isinstance(getattr(b.mlp.fc2, "peft_adapter", None), SparseAdapter)]
        if not fc2s:
            raise ConfigError("mosa: nothing to merge (the model was merged already)")
        for fc2 in fc2s:
            if fc2.bias is None:
                raise ConfigError("mosa: merge needs fc2 to have a bias (the adapter's biases fold into it)")
        for fc2 in fc2s:
            detach_adapter(fc2).fold_into(fc2)
