"""Classification loss with target checks.

Why: ``F.cross_entropy`` with a label outside ``0..C-1`` raises ``IndexError: Target 7 is out of bounds`` on CPU
(no batch position, no class count) and a device-side assert on CUDA that kills the process. :func:`check_targets`
names the batch index, the bad label and the number of classes instead; it costs one host sync per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pointpeft.errors import InputError


def check_targets(logits: torch.Tensor, target: torch.Tensor, name: str = "labels") -> None:
    """Raise InputError unless ``target`` fits ``logits`` (B, C): class indices (B,) in 0..C-1, or soft targets
    (B, C) that are finite."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"logits: expected shape (B, num_classes), got {shape}")
    if not isinstance(target, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(target).__name__}")
    B, C = logits.shape
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise InputError(f"{name}: float (soft) targets must have the logits' shape {(B, C)}, got "
                             f"{tuple(target.shape)}; class indices must be an integer tensor")
        bad = ~torch.isfinite(target).all(dim=1)
        if bad.any():
            raise InputError(f"{name}: NaN or inf in the soft target at batch index {int(bad.nonzero()[0, 0])}")
        return
    if target.dtype == torch.bool or target.is_complex():
        raise InputError(f"{name}: expected integer class indices, got dtype {target.dtype}")
    if target.shape != (B,):
        raise InputError(f"{name}: expected shape ({B},) to match logits {(B, C)}, got {tuple(target.shape)}")
    bad = (target < 0) | (target >= C)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise InputError(f"{name}: class index {int(target[i])} at batch index {i} is outside 0..{C - 1} "
                         f"(the model has {C} classes; {int(bad.sum())} bad label(s) in the batch)")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``F.cross_entropy`` after :func:`check_targets` (class indices or soft targets)."""
    check_targets(logits, target)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
