"""Timing helpers of the benchmarks: robust statistics and interleaved timing (CPU clock or CUDA events).

The machines this runs on are shared, so a single timing means little. Everything here is built for *comparisons
inside one run*: :func:`time_interleaved` runs the candidates round-robin (a load spike hits all of them), and
:func:`paired_ratio` gives the median and spread of the per-round ratios rather than a ratio of two medians taken
minutes apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


# -- statistics ---------------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Summary of repeated measurements (seconds, or any unit): median and spread (quartiles, min, max)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError("Stats.of needs at least one value")
        s = sorted(vals)
        return cls(statistics.median(s), _quantile(s, 0.25), _quantile(s, 0.75), s[0], s[-1], len(s), vals)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def scaled(self, factor: float) -> Stats:
        """Every value times ``factor`` (e.g. 1000 for milliseconds)."""
        return Stats.of([v * factor for v in self.values])

    def inverse(self, numerator: float = 1.0) -> Stats:
        """``numerator / value`` for every value (e.g. samples per second from seconds per step)."""
        return Stats.of([numerator / v for v in self.values if v > 0])

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, digits)
        d["values"] = [round(v, digits) for v in self.values]
        return d

    def fmt(self, digits: int = 1) -> str:
        """``median [min-max]`` for tables."""
        return f"{self.median:.{digits}f} [{self.min:.{digits}f}-{self.max:.{digits}f}]"


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> Stats:
    """Per-round ratios ``num[i] / den[i]`` of two interleaved series (same length): robust to load drifting
    between rounds, since both members of a pair ran back to back."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired_ratio needs two series of the same non-zero length, got {len(num)} and {len(den)}")
    return Stats.of([a / b for a, b in zip(num, den) if b > 0])


# -- timing -------------------------------------------------------------------------------------------------------
def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Times one call: ``perf_counter`` on CPU, CUDA events (after a synchronise) on a GPU."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Seconds taken by ``fn()``."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, reps: int = 5, device: str | torch.device = "cpu",
            min_time: float = 0.0) -> Stats:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``reps`` timed ones (more, while their total is
    below ``min_time`` seconds, so sub-millisecond ops get enough samples)."""
    timer = Timer(device)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < reps or sum(times) < min_time:
        times.append(timer(fn))
        if len(times) >= 1000:
            break
    return Stats.of(times)


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 1, reps: int = 5,
                     device: str | torch.device = "cpu") -> dict[str, Stats]:
    """Seconds per call of every candidate, timed round-robin (round r times each candidate once, in turn)."""
    timer = Timer(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timer(fn))
    return {k: Stats.of(v) for k, v in times.items()}
