"""Facts about modules that every layer asks (the module inside a data-parallel wrapper, its device), and the
state rule of modules that keep per-forward tensors between hooks."""

from __future__ import annotations

from typing import Any

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


class TransientState:
    """Mixin for objects that keep per-forward tensors between hooks, named in ``_TRANSIENT``: those tensors may
    hold an autograd graph, which cannot be deep-copied or pickled, so a copy or a pickle starts without them (the
    next forward recomputes them)."""

    _TRANSIENT: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent is not None else self.__dict__)
        for k in self._TRANSIENT:
            state[k] = None
        return state
