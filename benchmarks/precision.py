"""The precisions the benchmarks compare: fp32, bf16 autocast, and ``auto`` as the trainer resolves it."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from pointpeft.utils.machine import bf16_native_flags


def auto_dtype(device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype ``--amp auto`` picks here, and why. Uses pointpeft.engine.amp when it exists."""
    try:
        from pointpeft.engine import amp as engine_amp  # written by the engine helper
    except ImportError:
        engine_amp = None
    resolver = getattr(engine_amp, "resolve_amp_dtype", None) if engine_amp is not None else None
    if callable(resolver):
        try:
            dtype = resolver("auto", device)
            return dtype, "pointpeft.engine.amp.resolve_amp_dtype"
        except TypeError:
            pass
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), "cuda"
    flags = bf16_native_flags()
    return (torch.bfloat16, f"cpu flags {flags}") if flags else (None, "no native bf16 in /proc/cpuinfo")


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return auto_dtype(device)[0]
    raise ValueError(f"unknown precision {precision!r} (fp32 | bf16 | auto)")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
