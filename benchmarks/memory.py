"""Memory helpers of the benchmarks: current and peak resident set size of this process, and resetting the peak.

The training section measures each configuration in a fresh subprocess; these read its RSS from ``/proc``.
"""

from __future__ import annotations

import os
import platform
import resource

#: glibc malloc settings of the "live" memory measurement: a fixed mmap threshold turns off glibc's dynamic threshold,
#: so every freed large tensor goes back to the OS at once and the RSS follows the live tensors.
LIVE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
MIB = 2**20


# -- memory -------------------------------------------------------------------------------------------------------
def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's address space (``VmHWM`` in ``/proc/self/status``).

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``exec``, so a subprocess started from a big parent
    reports the parent's size at fork time (seen here: every worker showed the parent's 2 GiB). ``VmHWM`` belongs to
    the new address space and can be reset (:func:`reset_peak_rss`). Falls back to ``ru_maxrss`` off Linux.
    """
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if platform.system() == "Darwin" else int(peak) * 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
