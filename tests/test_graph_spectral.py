"""Graph spectral bases (pointpeft.ops.graph_spectral) and the Z-order sort (pointpeft.ops.zorder), as PointGST uses them.

Cost (measured here, CPU, 1 thread, B=32): the global basis plus the local bases of runs of 32 centres take 38 ms
for 64 centres and 110 ms for 128 (one ``eigh`` of (32, G, G) and one of (32 G / 32, 32, 32)); built once per forward.
"""

from __future__ import annotations

import pytest
import torch

from pointpeft.errors import InputError
from pointpeft.ops.graph_spectral import (
    graph_spectral_basis,
    inverse_distance_adjacency,
    normalized_laplacian,
    partition_spectral_bases,
)
from pointpeft.ops.zorder import morton_key, zorder_permutation


def _centres(b: int = 3, g: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, g, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _released_basis(centres: torch.Tensor) -> torch.Tensor:
    """The released get_basis, written out from its definition: W = 1 / (d / min_batch(d > 0) + I), the symmetric
    normalised Laplacian with eps 1e-6 in the degrees, eigh."""
    d = torch.cdist(centres, centres)
    eye = torch.eye(d.shape[-1], dtype=d.dtype)
    w = 1 / (d / d[d > 0].min() + eye)
    deg = torch.diag_embed(torch.rsqrt(w.sum(-1) + 1e-6))
    return torch.linalg.eigh(eye - deg @ w @ deg)[1]


def _same_up_to_column_signs(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-8) -> None:
    signs = torch.sign((a * b).sum(dim=-2, keepdim=True))
    torch.testing.assert_close(a, b * signs, rtol=0, atol=atol)


def test_basis_is_orthonormal_and_diagonalises_the_laplacian() -> None:
    c = _centres()
    u = graph_spectral_basis(c)
    eye = torch.eye(16, dtype=u.dtype).expand(3, -1, -1)
    torch.testing.assert_close(u.transpose(-2, -1) @ u, eye, rtol=0, atol=1e-10)
    lap = normalized_laplacian(inverse_distance_adjacency(c))
    lam = torch.diagonal(u.transpose(-2, -1) @ lap @ u, dim1=-2, dim2=-1)
    torch.testing.assert_close(lap @ u, u * lam.unsqueeze(-2), rtol=0, atol=1e-10)
    assert (lam[:, 1:] >= lam[:, :-1] - 1e-12).all() and lam.min() > -1e-9 and lam.max() < 2 + 1e-9


def test_basis_matches_the_released_definition_batch_min_included() -> None:
    c = _centres()
    _same_up_to_column_signs(graph_spectral_basis(c, "batch"), _released_basis(c))
    w = inverse_distance_adjacency(c)
    assert torch.allclose(torch.diagonal(w, dim1=-2, dim2=-1), torch.ones(3, 16, dtype=w.dtype))
    assert w.max() == 1.0  # the closest pair in the batch gets weight 1, every other pair less


def test_basis_is_permutation_equivariant() -> None:
    c = _centres()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    u, u_perm = graph_spectral_basis(c), graph_spectral_basis(c[:, perm])
    _same_up_to_column_signs(u_perm, u[:, perm])  # rows follow the vertices, columns (frequencies) stay


def test_batch_scale_couples_clouds_and_cloud_scale_does_not() -> None:
    c = _centres()
    other = c.clone()
    other[1:] *= 0.5  # shrink the other clouds: the batch's smallest distance changes
    assert not torch.allclose(inverse_distance_adjacency(c)[0], inverse_distance_adjacency(other)[0])
    torch.testing.assert_close(inverse_distance_adjacency(c, "cloud")[0], inverse_distance_adjacency(other, "cloud")[0])
    # per cloud, the graph does not depend on the cloud's size either
    torch.testing.assert_close(inverse_distance_adjacency(c, "cloud"), inverse_distance_adjacency(3 * c, "cloud"))


def test_coincident_points_give_a_finite_basis_and_bad_input_is_named() -> None:
    c = _centres(1, 8)
    c[0, 3] = c[0, 5]
    u = graph_spectral_basis(c.float())
    assert u.dtype == torch.float32 and torch.isfinite(u).all()
    with pytest.raises(InputError, match="inverse_distance_adjacency"):
        graph_spectral_basis(torch.rand(2, 8, 2))
    with pytest.raises(ValueError, match="scale"):
        graph_spectral_basis(c, "global")


def test_partition_bases_are_the_bases_of_the_sorted_runs() -> None:
    c = _centres(2, 16)
    order, _ = zorder_permutation(c)
    parts = partition_spectral_bases(c, order, 4, "cloud")
    assert parts.shape == (2, 4, 4, 4)
    run = torch.gather(c, 1, order.unsqueeze(-1).expand(-1, -1, 3))[1, 8:12]
    _same_up_to_column_signs(parts[1, 2], graph_spectral_basis(run, "cloud"))
    with pytest.raises(InputError, match="parts of 5"):
        partition_spectral_bases(c, order, 5)


def _morton_reference(x: int, y: int, z: int, bits: int = 16) -> int:
    key = 0
    for i in range(bits):
        key |= ((x >> i) & 1) << (3 * i + 2) | ((y >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i)
    return key


def test_morton_key_interleaves_two_complement_bits() -> None:
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 300, 77], [-1, 2, -100], [-100, -3, 99]])
    keys = morton_key(coords)
    expected = [_morton_reference(*(v & 0xFFFF for v in row)) for row in coords.tolist()]
    assert keys.tolist() == expected
    assert keys[1] == 4 and keys[2] == 2 and keys[3] == 1


def test_zorder_permutation_sorts_like_the_released_code() -> None:
    c = _centres(2, 16).float()
    order, inverse = zorder_permutation(c)
    q = (c * 100).trunc().long()
    keys = morton_key(torch.stack([q[..., 1], q[..., 0], q[..., 2]], dim=-1))  # y, x, z as released
    assert (keys.gather(1, order).diff(dim=1) >= 0).all()
    torch.testing.assert_close(c.gather(1, order.unsqueeze(-1).expand(-1, -1, 3)).gather(
        1, inverse.unsqueeze(-1).expand(-1, -1, 3)), c)
    # wrap=True: a negative coordinate sorts after the positive ones on its axis; wrap=False: a plain curve
    line = torch.tensor([[[0.0, -0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.1, 0.0]]])
    assert zorder_permutation(line)[0].tolist() == [[2, 1, 0]]
    assert zorder_permutation(line, wrap=False)[0].tolist() == [[0, 2, 1]]
