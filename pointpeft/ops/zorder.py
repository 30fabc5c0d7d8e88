"""Z-order (Morton) keys of 3D points, and the sort that groups nearby points into consecutive runs.

PointGST (``jerryfeng2003/PointGST``, ``models/PointTransformer.py`` forward, with ``models/z_order.py`` from
O-CNN) sorts the patch centres by ``xyz2key(c[..., 1], c[..., 0], c[..., 2])`` with ``c = 100 * centre``: the
coordinates are truncated to integers and their 16 low bits interleaved, the first argument's bit ``i`` going to
key bit ``3 i + 2``. Negative coordinates are not shifted first, so their two's-complement bits sort them after the
positive ones on each axis (``wrap=True``, as released); ``wrap=False`` shifts each cloud to non-negative
coordinates first, which gives a plain Z-order curve.
"""

from __future__ import annotations

import torch

from pointpeft.errors import InputError

#: PointGST's quantisation (coordinates times 100) and axis order (y, x, z; the first is the most significant)
RELEASED_SCALE = 100.0
RELEASED_AXES = (1, 0, 2)


def morton_key(coords: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """int64 keys (...) of integer coordinates (..., 3): bit ``i`` of coordinate 0, 1, 2 goes to key bit
    ``3 i + 2``, ``3 i + 1``, ``3 i``. Only the ``bits`` low bits of each coordinate count (two's complement)."""
    if coords.shape[-1] != 3:
        raise InputError(f"morton_key: expected coordinates of shape (..., 3), got {tuple(coords.shape)}")
    if not 1 <= bits <= 20:
        raise ValueError(f"bits must be in [1, 20] (the key has 3 * bits bits of an int64), got {bits}")
    c = coords.long()
    key = torch.zeros(c.shape[:-1], dtype=torch.int64, device=c.device)
    for i in range(bits):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            key |= ((c[..., axis] >> i) & 1) << (3 * i + shift)
    return key


def zorder_permutation(points: torch.Tensor, scale: float = RELEASED_SCALE, axes: tuple[int, int, int] = RELEASED_AXES,
                       wrap: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse), both (B, G) int64: ``points.gather(1, order)`` runs along the Z-order curve and
    ``inverse`` undoes it. Ties keep the input order (a stable sort)."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise InputError(f"zorder_permutation: expected points of shape (B, G, 3), got {tuple(points.shape)}")
    if sorted(axes) != [0, 1, 2]:
        raise ValueError(f"axes must be a permutation of (0, 1, 2), got {axes}")
    c = points.detach() * scale
    if not wrap:
        c = c - c.amin(dim=1, keepdim=True)
    key = morton_key(torch.stack([c[..., a] for a in axes], dim=-1).trunc())
    order = torch.sort(key, dim=1, stable=True).indices
    inverse = torch.argsort(order, dim=1)
    return order, inverse
