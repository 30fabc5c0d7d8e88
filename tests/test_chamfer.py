"""Chamfer distance against a brute-force reference: values, indices, chunking, gradients (gradcheck)."""

from __future__ import annotations

import pytest
import torch

from pointpeft.ops import chamfer_distance, chamfer_l1, chamfer_l2


def brute(x: torch.Tensor, y: torch.Tensor):
    d = ((x.unsqueeze(2) - y.unsqueeze(1)) ** 2).sum(-1)  # (B, N, M)
    d1, i1 = d.min(dim=2)
    d2, i2 = d.min(dim=1)
    return d1, d2, i1, i2


def clouds(B: int, N: int, M: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, 3, generator=g, dtype=dtype), torch.randn(B, M, 3, generator=g, dtype=dtype)


@pytest.mark.parametrize("max_elements", [2**23, 2 * 37 * 5, 1])  # one block; 5 rows a chunk; 1 row a chunk
def test_chamfer_matches_brute_force(max_elements: int) -> None:
    x, y = clouds(2, 50, 37)
    d1, d2, i1, i2 = chamfer_distance(x, y, max_elements=max_elements)
    r1, r2, ri1, ri2 = brute(x.double(), y.double())
    assert d1.shape == (2, 50) and d2.shape == (2, 37) and i1.dtype == torch.long
    torch.testing.assert_close(i1, ri1, rtol=0, atol=0)
    torch.testing.assert_close(i2, ri2, rtol=0, atol=0)
    torch.testing.assert_close(d1.double(), r1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d2.double(), r2, rtol=1e-5, atol=1e-6)


def test_chamfer_l1_l2_definitions() -> None:
    x, y = clouds(3, 20, 30, seed=1, dtype=torch.float64)
    r1, r2, _, _ = brute(x, y)
    torch.testing.assert_close(chamfer_l2(x, y), r1.mean() + r2.mean())
    torch.testing.assert_close(chamfer_l1(x, y), (r1.sqrt().mean() + r2.sqrt().mean()) / 2)
    assert float(chamfer_l2(x, x)) == 0.0 and float(chamfer_l1(y, y)) == 0.0
    # symmetric in its arguments
    torch.testing.assert_close(chamfer_l2(x, y), chamfer_l2(y, x))


def test_chamfer_gradcheck_both_inputs() -> None:
    x, y = clouds(2, 5, 7, seed=2, dtype=torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: chamfer_distance(a, b)[:2], (x, y))
    assert torch.autograd.gradcheck(lambda a, b: chamfer_distance(a, b, max_elements=7)[:2], (x, y))
    assert torch.autograd.gradcheck(chamfer_l2, (x, y))
    assert torch.autograd.gradcheck(chamfer_l1, (x, y))


def test_chamfer_gradient_equals_brute_force_gradient() -> None:
    x, y = clouds(2, 40, 25, seed=3)
    xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    xb, yb = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    chamfer_l2(xa, ya).backward()
    r1, r2, _, _ = brute(xb, yb)
    (r1.mean() + r2.mean()).backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ya.grad, yb.grad)
    assert xa.grad.abs().sum() > 0 and ya.grad.abs().sum() > 0


def test_chamfer_l1_zero_distance_gives_finite_gradient() -> None:
    x, _ = clouds(1, 10, 1, seed=4)
    y = torch.cat([x[:, :5], torch.randn(1, 6, 3)], dim=1)  # five points coincide exactly
    xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    chamfer_l1(xa, ya).backward()
    assert torch.isfinite(xa.grad).all() and torch.isfinite(ya.grad).all()


def test_chamfer_half_precision_and_errors() -> None:
    x, y = clouds(1, 8, 9, seed=5)
    d1, _, _, _ = chamfer_distance(x.bfloat16(), y.bfloat16())
    assert d1.dtype == torch.float32
    with pytest.raises(ValueError, match="batch sizes differ"):
        chamfer_distance(x, torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match=r"y must be a tensor of shape \(B, N, 3\)"):
        chamfer_distance(x, torch.rand(1, 4, 2))
    with pytest.raises(ValueError, match="unknown Chamfer backend 'gpu'"):
        chamfer_distance(x, y, backend="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda_ext' is unavailable: it needs a CUDA tensor"):
            chamfer_distance(x, y, backend="cuda_ext")
    with pytest.raises(ValueError, match="x has no points"):
        chamfer_distance(torch.rand(1, 0, 3), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chamfer_cuda_matches_cpu() -> None:  # pragma: no cover - run where a GPU is lent
    x, y = clouds(2, 64, 48, seed=6)
    ref = chamfer_distance(x, y, backend="torch")
    got = chamfer_distance(x.cuda(), y.cuda())  # the extension when built, else torch on CUDA
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.cpu().to(b.dtype), b, rtol=1e-4, atol=1e-5)
