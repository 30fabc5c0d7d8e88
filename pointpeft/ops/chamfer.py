"""Chamfer distance between point sets, with gradients to both inputs.

``chamfer_distance`` returns the squared distance of every point to its nearest neighbour in the other set
(and the neighbour's index), like the CUDA ``chamfer`` extension of Point-MAE / GRNet. The pure-PyTorch path finds
the neighbours without gradients in chunks (memory bounded by ``max_elements``), then recomputes the selected
squared distances differentiably, so the backward pass is the extension's: d/dx |x - y_nn|^2.

``chamfer_l2`` / ``chamfer_l1`` are Point-MAE's ``ChamferDistanceL2`` / ``ChamferDistanceL1``:
L2 = mean(dist1) + mean(dist2); L1 = (mean(sqrt(dist1)) + mean(sqrt(dist2))) / 2.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache

import torch

from pointpeft.errors import InputError
from pointpeft.ops.knn import pairwise_distance

#: Default cap on the elements of one (B, chunk, M) distance block: 2**23 = 32 MiB in float32.
CHAMFER_MAX_ELEMENTS = 2**23

ChamferResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"chamfer_distance: {name} must be a tensor of shape (B, N, 3), got {shape}")
        if not t.is_floating_point():
            raise InputError(f"chamfer_distance: {name} must be a float tensor, got {t.dtype}")
        if t.shape[1] == 0:
            raise InputError(f"chamfer_distance: {name} has no points")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"chamfer_distance: batch sizes differ: x has B={x.shape[0]}, y has B={y.shape[0]}")
    if x.device != y.device:
        raise InputError(f"chamfer_distance: x is on {x.device}, y on {y.device}")


def nearest_neighbours(x: torch.Tensor, y: torch.Tensor, max_elements: int = CHAMFER_MAX_ELEMENTS
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Without gradients: idx1 (B, N) nearest point of y for each x, idx2 (B, M) nearest of x for each y.

    Chunked over the points of x; ties go to the lower index.
    """
    B, N, _ = x.shape
    M = y.shape[1]
    with torch.no_grad():
        rows = max(1, max_elements // max(1, B * M))
        if rows >= N:
            d = pairwise_distance(x, y)
            return d.argmin(dim=2), d.argmin(dim=1)
        idx1 = torch.empty(B, N, dtype=torch.long, device=x.device)
        best2 = torch.full((B, M), float("inf"), dtype=x.dtype, device=x.device)
        idx2 = torch.zeros(B, M, dtype=torch.long, device=x.device)
        for s in range(0, N, rows):
            d = pairwise_distance(x[:, s : s + rows], y)  # (B, rows, M)
            idx1[:, s : s + rows] = d.argmin(dim=2)
            v, i = d.min(dim=1)
            better = v < best2  # strict: an earlier chunk keeps a tie
            best2 = torch.where(better, v, best2)
            idx2 = torch.where(better, i + s, idx2)
        return idx1, idx2


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def _chamfer_torch(x: torch.Tensor, y: torch.Tensor, max_elements: int) -> ChamferResult:
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    x = x.to(dtype)
    y = y.to(dtype)
    idx1, idx2 = nearest_neighbours(x.detach(), y.detach(), max_elements)
    dist1 = ((x - _gather(y, idx1)) ** 2).sum(-1)
    dist2 = ((y - _gather(x, idx2)) ** 2).sum(-1)
    return dist1, dist2, idx1, idx2


class _ChamferCudaExt(torch.autograd.Function):
    """The compiled ``chamfer`` extension (Point-MAE's extensions/chamfer_dist), float32 CUDA tensors."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        import chamfer

        dist1, dist2, idx1, idx2 = chamfer.forward(x, y)
        ctx.save_for_backward(x, y, idx1, idx2)
        ctx.mark_non_differentiable(idx1, idx2)
        return dist1, dist2, idx1, idx2

    @staticmethod
    def backward(ctx, g1, g2, _gi1, _gi2):  # type: ignore[override]
        import chamfer

        x, y, idx1, idx2 = ctx.saved_tensors
        gx, gy = chamfer.backward(x, y, idx1, idx2, g1.contiguous(), g2.contiguous())
        return gx, gy


def _chamfer_cuda_ext(x: torch.Tensor, y: torch.Tensor, max_elements: int) -> ChamferResult:
    dist1, dist2, idx1, idx2 = _ChamferCudaExt.apply(x.float().contiguous(), y.float().contiguous())
    return dist1, dist2, idx1.long(), idx2.long()


@cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a stale build raises more than ImportError
        return False
    return True


CHAMFER_BACKENDS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], ChamferResult]] = {
    "torch": _chamfer_torch,
    "cuda_ext": _chamfer_cuda_ext,
}


def _resolve(backend: str, x: torch.Tensor) -> str:
    ext_ok = x.is_cuda and _importable("chamfer")
    if backend == "auto":
        return "cuda_ext" if ext_ok else "torch"
    if backend not in CHAMFER_BACKENDS:
        raise InputError(f"unknown Chamfer backend {backend!r}; choices: {['auto', *CHAMFER_BACKENDS]}")
    if backend == "cuda_ext" and not ext_ok:
        why = "a CUDA tensor" if not x.is_cuda else "the compiled 'chamfer' module"
        raise InputError(f"Chamfer backend 'cuda_ext' is unavailable: it needs {why}; use 'torch' or 'auto'")
    return backend


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, *, backend: str = "auto",
                     max_elements: int = CHAMFER_MAX_ELEMENTS) -> ChamferResult:
    """(dist1 (B, N), dist2 (B, M), idx1 (B, N), idx2 (B, M)) for x (B, N, 3), y (B, M, 3).

    dist1[b, i] = min_j |x[b, i] - y[b, j]|^2 (idx1 = that j); dist2 likewise from y to x. Differentiable in
    x and y. ``backend``: "auto" (the CUDA extension on CUDA tensors when importable, else torch), "torch",
    "cuda_ext".
    """
    _check(x, y)
    return CHAMFER_BACKENDS[_resolve(backend, x)](x, y, max_elements)


def chamfer_l2(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Point-MAE's ChamferDistanceL2: mean(dist1) + mean(dist2) (squared distances)."""
    dist1, dist2, _, _ = chamfer_distance(x, y, **kwargs)
    return dist1.mean() + dist2.mean()


def _sqrt0(d: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf -> NaN) where d == 0, e.g. a point that coincides with its neighbour."""
    pos = d > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, d, torch.ones_like(d))), torch.zeros_like(d))


def chamfer_l1(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Point-MAE's ChamferDistanceL1: (mean(sqrt(dist1)) + mean(sqrt(dist2))) / 2.

    Same value; where a distance is exactly 0 the gradient is 0 instead of the original's NaN.
    """
    dist1, dist2, _, _ = chamfer_distance(x, y, **kwargs)
    return (_sqrt0(dist1).mean() + _sqrt0(dist2).mean()) / 2
