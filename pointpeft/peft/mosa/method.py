"""MoSA: an expert-split adapter at every FFN, a consistency loss between two sampled routes, and merging."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.adapter.placement import attach_residual_branch
from pointpeft.peft.attach import attach_adapter, detach_adapter
from pointpeft.peft.aux_loss import collect_aux_losses
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.mosa.config import MosaConfig
from pointpeft.peft.mosa.experts import MergedAdapter, MosaAdapter
from pointpeft.peft.mosa.layers import SparseAdapter
from pointpeft.utils.modules import unwrap


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, detach_target: bool = True) -> torch.Tensor:
    """``(KL(p_b || p_a) + KL(p_a || p_b)) / 2`` between two forwards' class distributions, mean over the batch.

    With ``detach_target`` (the official ``symmetric_KL_loss``) each half's target distribution is a constant, so
    a half only moves the forward whose log-probabilities it scores; the value is the same either way.
    """
    la, lb = F.log_softmax(logits_a.float(), dim=-1), F.log_softmax(logits_b.float(), dim=-1)
    ta, tb = (la.detach(), lb.detach()) if detach_target else (la, lb)
    kl_b_a = F.kl_div(la, tb, log_target=True, reduction="batchmean")  # KL(p_b || p_a)
    kl_a_b = F.kl_div(lb, ta, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    return 0.5 * (kl_b_a + kl_a_b)


def sparse_adapters(model: nn.Module) -> list[SparseAdapter]:
    """The linear-style (earlier variant) adapters of a model."""
    return [m for m in model.modules() if isinstance(m, SparseAdapter)]


def mosa_adapters(model: nn.Module) -> list[MosaAdapter]:
    """The expert-split adapters (styles adaptformer / pfeiffer) of a model."""
    return [m for m in unwrap(model).modules() if isinstance(m, MosaAdapter)]


class Mosa(PeftMethod):
    """Mixture of Sparse Adapters (default: the released AdaptFormer-style MoSA with SHARE=down)."""

    name = "mosa"
    config_class = MosaConfig
    zero_init_output = True  # up projections start at zero

    @property
    def drawn_experts(self) -> bool:  # type: ignore[override]
        """A step trains only the experts its forwards drew; the others get no gradient (and no optimiser step)."""
        return self.config.style != "linear" and self.config.num_modules > 1

    @property
    def mergeable(self) -> bool:  # type: ignore[override]
        """Only the linear style folds into fc2; the non-linear styles merge into one dense adapter
        (:func:`merge_experts`) but not into the backbone."""
        return self.config.style == "linear" and self.config.activation == "none"

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        for i, block in enumerate(spec.blocks):
            ref = block.mlp.fc2.weight
            if cfg.style == "linear":
                groups = (cfg.num_groups, cfg.num_active_groups) if cfg.hierarchical else (1, 1)
                adapter = SparseAdapter(spec.embed_dim, cfg.r, cfg.num_modules, cfg.num_active, cfg.adapter_scale,
                                        cfg.activation, cfg.rescale, *groups, seed=cfg.seed + i,
                                        sparse_view=cfg.sparse_view, module_merge=cfg.module_merge)
                attach_adapter(block.mlp.fc2, adapter.to(ref.device, ref.dtype), "sequential")
                continue
            adapter = MosaAdapter(spec.embed_dim, cfg.r, cfg.num_modules, cfg.share,
                                  "gelu" if cfg.style == "adaptformer" else "relu", cfg.adapter_scale,
                                  cfg.adapter_dropout, cfg.split_bias, seed=cfg.seed + i).to(ref.device, ref.dtype)
            if cfg.style == "pfeiffer":  # on the FFN output, before the residual
                attach_adapter(block.mlp, adapter, "sequential")
                continue
            attach_residual_branch(block, adapter, block, "peft_mosa")  # AdaptFormer's placement

    def training_forward(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Two forwards with independently drawn routes; the first's logits, plus the weighted symmetric KL."""
        logits = model(inputs)
        aux = collect_aux_losses(unwrap(model))
        w = float(self.config.consistency_weight)
        if w > 0 and model.training and torch.is_grad_enabled():
            other = model(inputs)
            aux["consistency_loss"] = w * symmetric_kl(logits, other, self.config.consistency_detach)
        return logits, aux

    def merge(self, model: nn.Module, spec: Any) -> None:
        """Style linear: fold the merged dense adapter into fc2 (``W' = (I + s U D) W``)."""
        if not self.mergeable:
            raise ConfigError(f"mosa style {self.config.style!r} (activation {self.config.activation!r}) is a "
                              "non-linear adapter and cannot be merged into the backbone; "
                              "pointpeft.peft.mosa.merge_experts merges its experts into one dense adapter")
        fc2s = [b.mlp.fc2 for b in spec.blocks if isinstance(getattr(b.mlp.fc2, "peft_adapter", None), SparseAdapter)]
        if not fc2s:
            raise ConfigError("mosa: nothing to merge (the model was merged already)")
        for fc2 in fc2s:
            if fc2.bias is None:
                raise ConfigError("mosa: merge needs fc2 to have a bias (the adapter's biases fold into it)")
        for fc2 in fc2s:
            detach_adapter(fc2).fold_into(fc2)


def merge_experts(model: nn.Module) -> nn.Module:
    """Replace every expert-split adapter by its merged dense adapter (the mean of the experts; the official
    ``merge('add')`` after tuning). The evaluation output is unchanged; the result is an inference model (its
    ``peft_config`` can no longer be reloaded with ``load_adapter``)."""
    inner = unwrap(model)
    found = False
    for module in list(inner.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MosaAdapter):
                setattr(module, name, MergedAdapter(child))
                found = True
    if not found:
        raise ConfigError("mosa: no expert-split adapter to merge (style linear folds with merge, or already merged)")
    inner.peft_merged_experts = True
    return model
