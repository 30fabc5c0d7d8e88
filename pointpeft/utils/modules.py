"""Two facts about a model that every layer asks: the module inside a data-parallel wrapper, and its device."""

from __future__ import annotations

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def device_of(model: nn.Module) -> torch.device:
    """Where the (unwrapped) model's first parameter lives; CPU for a model without parameters."""
    p = next(unwrap(model).parameters(), None)
    return p.device if p is not None else torch.device("cpu")
