"""Exact farthest point sampling compiled with numba (imported only when the ``numba`` backend runs).

Why a kernel of our own: fpsample's exact mode holds the GIL and runs one cloud at a time; this one releases the
GIL (so a thread pool splits the batch) and is written so that LLVM vectorises the distance update. It returns
the reference indices bit for bit:

* distances are ``((x-cx)^2 + (y-cy)^2) + (z-cz)^2`` in float32 with no fused multiply-add (numba compiles
  without fast-math, so LLVM may not contract), exactly the arithmetic of :func:`pointpeft.ops.fps.fps_torch`;
* the running minimum uses ``d < m`` and the next centre is the FIRST index of the maximum (like ``argmax``);
  a chosen point's distance is set to -1, as in the reference, so duplicates never repeat an index.

The maximum is searched in blocks of ``_BLOCK`` points: the block maxima vectorise (fast-math flags there only
allow reordering a max, which cannot change its value), then one scan of the winning block finds the first index.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 16  # measured: 8-16 best, 64+ slower (B=32, N=8192, AVX-512 Xeon)


@njit(nogil=True, boundscheck=False, fastmath={"nnan", "nsz", "reassoc"}, inline="always", cache=True)
def _block_max(dist, start):  # pragma: no cover - compiled
    best = np.float32(-1.0)
    for j in range(start, start + _BLOCK):
        best = max(best, dist[j])
    return best


@njit(nogil=True, boundscheck=False, cache=True)
def _fps_one(x, y, z, npoint, out, dist):  # pragma: no cover - compiled
    n = x.shape[0]
    nblocks = n // _BLOCK
    for j in range(n):
        dist[j] = np.inf
    far = 0
    for i in range(npoint):
        out[i] = far
        cx = x[far]
        cy = y[far]
        cz = z[far]
        for j in range(n):
            dx = x[j] - cx
            dy = y[j] - cy
            dz = z[j] - cz
            d = dx * dx + dy * dy + dz * dz
            m = dist[j]
            dist[j] = d if d < m else m
        dist[far] = np.float32(-1.0)  # never pick a chosen point again (only matters when all tie at 0)
        best = np.float32(-1.0)
        best_block = 0
        for blk in range(nblocks):
            bm = _block_max(dist, blk * _BLOCK)
            if bm > best:
                best = bm
                best_block = blk
        far = -1
        for j in range(nblocks * _BLOCK, n):  # the tail after the last full block
            if dist[j] > best:
                best = dist[j]
                far = j
        if far < 0:
            for j in range(best_block * _BLOCK, best_block * _BLOCK + _BLOCK):
                if dist[j] == best:
                    far = j
                    break
            if far < 0:  # only with NaN coordinates: keep going deterministically
                far = 0


@njit(nogil=True, boundscheck=False, cache=True)
def fps_planes(planes, npoint, out):  # pragma: no cover - compiled
    """planes (B, 3, N) float32 C-contiguous -> fills out (B, npoint) int64.

    (B, 3, N) so that a slice of clouds stays C-contiguous: a strided view compiles to unvectorised code.
    """
    n = planes.shape[2]
    dist = np.empty(n, np.float32)
    for b in range(planes.shape[0]):
        _fps_one(planes[b, 0], planes[b, 1], planes[b, 2], npoint, out[b], dist)
