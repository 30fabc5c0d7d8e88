"""Farthest point sampling with one ``backend=`` switch.

Every exact backend starts at point 0 of each cloud (like ``pointnet2_ops``) and returns the indices of the
reference :func:`fps_torch` on clouds without ties: distances are squared Euclidean in float32 and the next centre
is the point farthest from the chosen set. Backends (see :data:`FPS_BACKENDS`):

==================  =====  ======  ==================================================================
name                exact  device  needs
==================  =====  ======  ==================================================================
``torch``           yes    any     nothing (the reference; npoint sequential steps vectorised over B, N)
``numba``           yes    CPU     ``numba``; fastest exact CPU path, batch split over threads (no GIL)
``fpsample``        yes    CPU     ``fpsample`` (``fps_sampling(..., start_idx=0)``; holds the GIL)
``fpsample_kdline`` no     CPU     ``fpsample``; QuickFPS buckets, a different (approximate) sample set
``pointnet2``       yes*   CUDA    ``pointnet2_ops`` (*its kernel skips points within 0.032 of the origin)
==================  =====  ======  ==================================================================

``"auto"`` = ``pointnet2`` for CUDA tensors when importable, else ``torch``; on CPU ``numba``, else ``fpsample``,
else ``torch``. The approximate ``fpsample_kdline`` is opt-in only. CPU backends given a CUDA tensor run on a
CPU copy and return indices on the input's device. Ties (duplicate points) never crash and are deterministic:
``torch`` and ``numba`` take the first index of the maximum among the points not chosen yet, so their indices
are distinct even when a cloud has fewer distinct points than ``npoint`` (a cloud of one repeated point gives
0, 1, 2, ...); ``fpsample`` and ``pointnet2`` use their own fixed rules.
"""

from __future__ import annotations

import importlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from pointpeft.errors import InputError
from pointpeft.utils.misc import get_logger

log = get_logger("ops.fps")


# ---------------------------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------------------------
def fps_torch(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Reference FPS: ``npoint`` sequential steps, each one vectorised over the batch and the points.

    Coordinates are kept as three (B, N) planes so each step is a handful of contiguous element-wise kernels;
    the arithmetic order ``(dx*dx + dy*dy) + dz*dz`` (no fused multiply-add) is the one the exact backends share.
    """
    B, N, _ = xyz.shape
    dev = xyz.device
    planes = xyz.float().permute(2, 0, 1).contiguous()  # (3, B, N)
    idx = torch.empty(B, npoint, dtype=torch.long, device=dev)
    dist = torch.full((B, N), float("inf"), device=dev)
    d = torch.empty(B, N, device=dev)
    tmp = torch.empty(B, N, device=dev)
    farthest = torch.zeros(B, 1, dtype=torch.long, device=dev)
    for i in range(npoint):
        idx[:, i : i + 1] = farthest
        c = torch.gather(planes, 2, farthest.unsqueeze(0).expand(3, B, 1))  # (3, B, 1)
        torch.sub(planes[0], c[0], out=tmp)
        torch.mul(tmp, tmp, out=d)
        for k in (1, 2):
            torch.sub(planes[k], c[k], out=tmp)
            tmp.mul_(tmp)
            d.add_(tmp)
        torch.minimum(dist, d, out=dist)
        dist.scatter_(1, farthest, -1.0)  # never pick a chosen point again (only matters when all tie at 0)
        farthest = dist.argmax(-1, keepdim=True)
    return idx


_POOL: ThreadPoolExecutor | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    """One pool per process (a forked DataLoader worker must not reuse its parent's dead threads)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="pointpeft-fps")
            _POOL_PID = os.getpid()
        return _POOL


def _fps_numba(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    from pointpeft.ops._fps_numba import fps_planes

    B = xyz.shape[0]
    planes = np.ascontiguousarray(xyz.detach().float().transpose(1, 2).numpy())  # (B, 3, N) float32
    out = np.empty((B, npoint), dtype=np.int64)
    # As many threads as torch may use (1 inside DataLoader workers), at least 2 clouds each.
    nthreads = max(1, min(torch.get_num_threads(), B // 2))
    if nthreads == 1:
        fps_planes(planes, npoint, out)
    else:
        bounds = np.linspace(0, B, nthreads + 1).astype(int)
        jobs = [_thread_pool().submit(fps_planes, planes[lo:hi], npoint, out[lo:hi])
                for lo, hi in zip(bounds[:-1], bounds[1:])]
        for j in jobs:
            j.result()
    return torch.from_numpy(out)


def _fps_fpsample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    import fpsample

    # fpsample's Rust code holds the GIL (measured: a thread pool gives no speed-up), so a plain loop.
    pts = xyz.detach().float().numpy()
    out = np.stack([fpsample.fps_sampling(p, npoint, start_idx=0) for p in pts])
    return torch.from_numpy(out.astype(np.int64, copy=False))


def kdline_height(n: int) -> int:
    """Bucket tree height for QuickFPS: log2(n) - 8, clamped to [1, 9] (2**h <= n).

    Measured (B=32, 2 threads): N=1024 fastest at h=2 (2.9 ms; h=6: 6.9 ms), N=8192 at h=4-5 (48 ms; h=9: 136 ms).
    """
    return max(1, min(9, round(math.log2(max(n, 2))) - 8))


def _fps_fpsample_kdline(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    import fpsample

    pts = xyz.detach().float().numpy()
    h = kdline_height(pts.shape[1])
    out = np.stack([fpsample.bucket_fps_kdline_sampling(p, npoint, h, start_idx=0) for p in pts])
    return torch.from_numpy(out.astype(np.int64, copy=False))


def _fps_pointnet2(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    from pointnet2_ops import pointnet2_utils

    return pointnet2_utils.furthest_point_sample(xyz.detach().float().contiguous(), npoint).long()


@cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # an extension built for another torch/CUDA fails with more than ImportError
        return False
    return True


@dataclass(frozen=True)
class FpsBackend:
    """One FPS implementation: what it needs and whether it returns the reference indices."""

    fn: Callable[[torch.Tensor, int], torch.Tensor]
    exact: bool
    module: str | None  # python module that must import
    device: str  # "any" | "cpu" (CUDA input runs on a CPU copy) | "cuda" (CUDA tensors only)

    def unavailable_reason(self, xyz: torch.Tensor) -> str | None:
        if self.module is not None and not _importable(self.module):
            return f"module {self.module!r} is not importable"
        if self.device == "cuda" and not xyz.is_cuda:
            return f"it needs a CUDA tensor, got one on {xyz.device}"
        return None


FPS_BACKENDS: dict[str, FpsBackend] = {
    "torch": FpsBackend(fps_torch, exact=True, module=None, device="any"),
    "numba": FpsBackend(_fps_numba, exact=True, module="numba", device="cpu"),
    "fpsample": FpsBackend(_fps_fpsample, exact=True, module="fpsample", device="cpu"),
    "fpsample_kdline": FpsBackend(_fps_fpsample_kdline, exact=False, module="fpsample", device="cpu"),
    "pointnet2": FpsBackend(_fps_pointnet2, exact=True, module="pointnet2_ops.pointnet2_utils", device="cuda"),
}

#: Preference order of ``backend="auto"``, per device type (first available wins; exact backends only).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("pointnet2", "torch"),
    "cpu": ("numba", "fpsample", "torch"),
}


def available_fps_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on tensors of ``device`` in this environment."""
    is_cuda = torch.device(device).type == "cuda"
    return [name for name, be in FPS_BACKENDS.items()
            if (be.module is None or _importable(be.module)) and (be.device != "cuda" or is_cuda)]


def resolve_fps_backend(backend: str, xyz: torch.Tensor) -> str:
    """The backend name that will run for ``xyz``; ValueError (InputError) naming the choices otherwise."""
    if backend == "auto":
        order = AUTO_ORDER.get(xyz.device.type, AUTO_ORDER["cpu"])
        for name in order:
            if FPS_BACKENDS[name].unavailable_reason(xyz) is None:
                return name
        return "torch"
    if backend not in FPS_BACKENDS:
        raise InputError(f"unknown FPS backend {backend!r}; choices: {['auto', *FPS_BACKENDS]}")
    reason = FPS_BACKENDS[backend].unavailable_reason(xyz)
    if reason is not None:
        avail = available_fps_backends(xyz.device)
        raise InputError(f"FPS backend {backend!r} is unavailable: {reason}; available here: {['auto', *avail]}")
    return backend


# ---------------------------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------------------------
def farthest_point_sample(xyz: torch.Tensor, npoint: int, backend: str = "auto") -> torch.Tensor:
    """Indices (B, npoint) int64 of farthest point sampling on ``xyz`` (B, N, 3), starting at point 0.

    ``backend``: ``"auto"`` or a key of :data:`FPS_BACKENDS`. Never needs gradients (indices only).
    """
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise InputError(f"farthest_point_sample: xyz must be a tensor of shape (B, N, 3), got {shape}")
    if not xyz.is_floating_point():
        raise InputError(f"farthest_point_sample: xyz must be a float tensor, got {xyz.dtype}")
    B, N, _ = xyz.shape
    if isinstance(npoint, bool) or not isinstance(npoint, int) or npoint < 1:
        raise InputError(f"farthest_point_sample: npoint must be an int >= 1, got {npoint!r}")
    if npoint > N:
        raise InputError(f"farthest_point_sample: npoint={npoint} exceeds the {N} points of each cloud")
    name = resolve_fps_backend(backend, xyz)
    if B == 0:
        return torch.empty(0, npoint, dtype=torch.long, device=xyz.device)
    be = FPS_BACKENDS[name]
    with torch.no_grad():
        if be.device == "cpu" and xyz.device.type != "cpu":
            return be.fn(xyz.cpu(), npoint).to(xyz.device)
        return be.fn(xyz, npoint)


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C), idx (B, ...) -> (B, ..., C)."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])
