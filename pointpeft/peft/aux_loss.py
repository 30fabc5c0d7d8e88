"""Auxiliary losses that modules produce in their forward (SMoA load balance, MoSA consistency...).

A module that has one subclasses :class:`AuxLossMixin`; the training step adds :func:`collect_aux_losses` to the
task loss. Kept apart from ``base`` and ``inject`` so that both (and the methods' layers) import it without a
circle.
"""

from __future__ import annotations

import torch
from torch import nn


class AuxLossMixin:
    """Modules that produce an auxiliary loss in their forward (e.g. SMoA load balancing) expose it here."""

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return {}


def collect_aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weighted auxiliary losses produced by the last forward, summed over modules of the same kind."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, AuxLossMixin) and id(m) not in seen:
            seen.add(id(m))
            for k, v in m.aux_losses().items():
                out[k] = out[k] + v if k in out else v
    return out
