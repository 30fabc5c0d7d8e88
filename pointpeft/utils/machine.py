"""Facts about the machine a run is on: CPU model and flags, native bf16, cores, load, the torch build.

The trainer records them in every ``results.json`` and ``--amp auto`` reads the bf16 flags; the benchmarks record
them beside every timing, since a timing means little without the machine it came from.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

#: CPU features that run bf16 natively (AMX-BF16 tiles, AVX512-BF16 dot products); without them bf16 is emulated.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: flags worth recording: which vector units this CPU has (what decides fp32/bf16 GEMM speed)
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    value = _cpuinfo_field("flags")
    return set(value.split()) if value else set()


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def bf16_native_flags() -> list[str]:
    """The native-bf16 CPU features present (AMX-BF16 tiles, AVX512-BF16 dot products)."""
    flags = cpu_flags()
    return [f for f in BF16_CPU_FLAGS if f in flags]


def cpu_kind() -> str:
    """A short name for the kind of CPU, what speed ratios depend on: vendor plus its widest bf16/vector unit,
    e.g. ``amd-avx2``, ``amd-avx512bf16``, ``intel-amx``."""
    model = cpu_model().lower()
    vendor = "intel" if "intel" in model else "amd" if "amd" in model else platform.machine().lower() or "cpu"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        unit = "amx"
    elif "avx512_bf16" in flags:
        unit = "avx512bf16"
    elif "avx512f" in flags:
        unit = "avx512"
    elif "avx2" in flags:
        unit = "avx2"
    else:
        unit = "novec"
    return f"{vendor}-{unit}"


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (how busy the shared machine was); None where unsupported."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, kind and flags, cores, torch build, ATen CPU capability, native bf16, GPU, load."""
    flags = cpu_flags()
    info: dict[str, Any] = {
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_kind": cpu_kind(),
        "cpu_vector_flags": [f for f in VECTOR_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native_flags": bf16_native_flags(),
        "bf16_native": bool(bf16_native_flags()),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    try:
        info["mem_total_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info["loadavg"] = load_average()
    return info
