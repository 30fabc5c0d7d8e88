"""Mixed precision chosen per machine: bf16 only where the hardware runs it natively.

On CPUs with AMX-BF16/AVX512-BF16 autocast bf16 is a 2-3x win; on AVX2-only CPUs bf16 is emulated and a training
step gets ~13x slower (docs/design-notes.md, "bf16 only where it is native"), so ``auto`` never assumes: it reads
the CPU flags and, when they are silent, times a short matmul probe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pointpeft.errors import ConfigError
from pointpeft.utils.machine import bf16_native_flags
from pointpeft.utils.misc import get_logger

log = get_logger("engine.amp")

AMP_MODES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AmpPolicy:
    """What autocast does in a run: ``mode`` is the resolved choice (never ``auto``), ``reason`` says why."""

    mode: str
    device_type: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.mode]

    @property
    def use_scaler(self) -> bool:
        """fp16 needs loss scaling (bf16 has fp32's exponent range)."""
        return self.mode == "fp16"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            yield


def bf16_probe_ratio(size: int = 384, reps: int = 3) -> float:
    """Time of a bf16 matmul over an fp32 one (< 1: bf16 is faster here; ~10: emulated)."""
    gen = torch.Generator().manual_seed(0)  # never touch the global RNG: model init comes after this probe
    a32 = torch.randn(size, size, generator=gen)
    b32 = torch.randn(size, size, generator=gen)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def best(a: torch.Tensor, b: torch.Tensor) -> float:
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a16, b16) / max(best(a32, b32), 1e-9)


def resolve_amp(mode: str, device: torch.device | str) -> AmpPolicy:
    """Turn ``--amp`` into a policy for ``device``; ``auto`` picks bf16 only where it is native."""
    mode = str(mode).lower()
    if mode not in AMP_MODES:
        raise ConfigError(f"amp must be one of {list(AMP_MODES)}, got {mode!r}")
    device_type = torch.device(device).type
    if device_type == "cpu":
        if mode == "fp16":
            raise ConfigError("amp fp16 needs CUDA (CPU autocast is bf16 only); use --amp bf16 or fp32")
        if mode != "auto":
            return AmpPolicy(mode, device_type, "requested")
        flags = bf16_native_flags()
        if flags:
            return AmpPolicy("bf16", device_type, f"native bf16 on this CPU ({', '.join(flags)})")
        ratio = bf16_probe_ratio()
        if ratio < 0.8:
            return AmpPolicy("bf16", device_type, f"bf16 matmul probe {ratio:.2f}x the fp32 time")
        return AmpPolicy("fp32", device_type, f"no native bf16 on this CPU (bf16 matmul probe {ratio:.1f}x fp32)")
    if device_type == "cuda":
        if mode != "auto":
            return AmpPolicy(mode, device_type, "requested")
        if torch.cuda.is_bf16_supported():
            return AmpPolicy("bf16", device_type, f"{torch.cuda.get_device_name()} supports bf16")
        return AmpPolicy("fp16", device_type, "GPU without bf16: fp16 with loss scaling")
    if mode in ("auto", "fp32"):
        return AmpPolicy("fp32", device_type, f"no autocast policy for device {device_type}")
    return AmpPolicy(mode, device_type, "requested")


def make_grad_scaler(policy: AmpPolicy) -> torch.amp.GradScaler:
    """A GradScaler that is only enabled for fp16 (its state dict is saved either way)."""
    return torch.amp.GradScaler(policy.device_type if policy.device_type == "cuda" else "cpu",
                                enabled=policy.use_scaler)
