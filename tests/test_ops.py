"""FPS and kNN: every backend against an independent brute-force reference, ties, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from pointpeft.ops import (
    FPS_BACKENDS,
    available_fps_backends,
    farthest_point_sample,
    knn_query,
    resolve_fps_backend,
)
from pointpeft.ops.fps import kdline_height

EXACT_CPU = [n for n in available_fps_backends("cpu") if FPS_BACKENDS[n].exact]


def test_hard_dependency_backends_are_available() -> None:
    """fpsample and numba are hard dependencies (pyproject.toml): a broken install fails here instead of silently
    dropping their tests and falling back to the slow torch loop."""
    import fpsample  # noqa: F401
    import numba  # noqa: F401

    assert {"numba", "fpsample", "fpsample_kdline"} <= set(available_fps_backends("cpu"))
    assert {"numba", "fpsample"} <= set(EXACT_CPU)


def naive_fps(pts: np.ndarray, npoint: int) -> tuple[np.ndarray, bool]:
    """Textbook FPS on one float32 cloud from point 0. Returns (indices, whether a tie for the max occurred)."""
    pts = pts.astype(np.float32)
    dist = np.full(len(pts), np.inf, dtype=np.float32)
    out, far, tie = [], 0, False
    for _ in range(npoint):
        out.append(far)
        diff = pts - pts[far]
        d = (diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1]) + diff[:, 2] * diff[:, 2]
        dist = np.minimum(dist, d)
        far = int(np.argmax(dist))
        if len(out) < npoint:  # the choice after the last pick is never used
            tie |= int((dist == dist[far]).sum()) > 1
    return np.array(out), tie


def assert_valid_fps(pts: np.ndarray, idx: np.ndarray) -> None:
    """Tie-aware check: every chosen point is at the maximal distance from the points chosen before it."""
    pts = pts.astype(np.float32)
    dist = np.full(len(pts), np.inf, dtype=np.float32)
    assert idx[0] == 0
    for i in range(len(idx) - 1):
        diff = pts - pts[idx[i]]
        dist = np.minimum(dist, (diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1]) + diff[:, 2] * diff[:, 2])
        assert dist[idx[i + 1]] == dist.max(), f"step {i + 1}: picked {idx[i + 1]} not a farthest point"


def check_against_reference(xyz: torch.Tensor, npoint: int, backend: str) -> int:
    got = farthest_point_sample(xyz, npoint, backend=backend)
    assert got.dtype == torch.long and got.shape == (xyz.shape[0], npoint)
    compared = 0
    for b, pts in enumerate(xyz.numpy()):
        ref, tie = naive_fps(pts, npoint)
        if tie:
            assert_valid_fps(pts, got[b].numpy())
        else:
            np.testing.assert_array_equal(got[b].numpy(), ref, err_msg=f"backend {backend}, cloud {b}")
            compared += 1
    return compared


@pytest.mark.parametrize("backend", EXACT_CPU)
@pytest.mark.parametrize("n,npoint", [(512, 64), (1000, 37), (13, 13)])  # 1000 / 13: not a multiple of 16
def test_fps_exact_backends_match_reference(backend: str, n: int, npoint: int) -> None:
    g = torch.Generator().manual_seed(n)
    xyz = torch.rand(5, n, 3, generator=g) * 2 - 1
    assert check_against_reference(xyz, npoint, backend) >= 4  # random clouds: (almost) never a tie


@pytest.mark.parametrize("backend", EXACT_CPU)
def test_fps_real_modelnet_cloud(backend: str, modelnet_h5_root) -> None:
    with h5py.File(modelnet_h5_root / "ply_data_test0.h5") as f:
        xyz = torch.from_numpy(f["data"][:6])
    assert check_against_reference(xyz, 64, backend) == 6


def test_fps_backends_agree_and_start_at_zero() -> None:
    xyz = torch.randn(8, 700, 3, generator=torch.Generator().manual_seed(3))
    results = {b: farthest_point_sample(xyz, 48, backend=b) for b in EXACT_CPU}
    for b, r in results.items():
        assert (r[:, 0] == 0).all(), b
        torch.testing.assert_close(r, results["torch"], rtol=0, atol=0, msg=f"{b} != torch")
    # float64 input: distances are float32 in every backend, so the same indices.
    torch.testing.assert_close(farthest_point_sample(xyz.double(), 48), results["torch"], rtol=0, atol=0)


def test_fps_auto_is_exact_and_never_kdline() -> None:
    xyz = torch.rand(2, 64, 3)
    name = resolve_fps_backend("auto", xyz)
    assert FPS_BACKENDS[name].exact and name != "fpsample_kdline"
    assert name == "numba"  # a hard dependency: always there


def test_fps_kdline_is_an_approximate_opt_in() -> None:
    xyz = torch.rand(3, 1024, 3, generator=torch.Generator().manual_seed(0))
    idx = farthest_point_sample(xyz, 64, backend="fpsample_kdline")
    assert idx.shape == (3, 64) and idx.dtype == torch.long
    for row in idx:
        assert len(set(row.tolist())) == 64 and 0 <= int(row.min()) and int(row.max()) < 1024
    # well spread: its minimum pairwise spacing is close to exact FPS's
    exact = farthest_point_sample(xyz, 64, backend="torch")

    def spacing(i: torch.Tensor) -> float:
        c = torch.gather(xyz, 1, i.unsqueeze(-1).expand(-1, -1, 3))
        d = torch.cdist(c, c) + torch.eye(64) * 10
        return float(d.min(-1).values.mean())

    assert spacing(idx) > 0.8 * spacing(exact)
    assert (kdline_height(1024), kdline_height(8192), kdline_height(16), kdline_height(10**7)) == (2, 5, 1, 9)


@pytest.mark.parametrize("backend", available_fps_backends("cpu"))
def test_fps_duplicates_do_not_crash_and_are_deterministic(backend: str) -> None:
    same = torch.zeros(2, 40, 3)  # every point identical: every distance ties at 0
    base = torch.rand(2, 50, 3, generator=torch.Generator().manual_seed(1))
    doubled = torch.cat([base, base], dim=1)  # each point twice
    for xyz, npoint in ((same, 8), (doubled, 60)):
        a = farthest_point_sample(xyz, npoint, backend=backend)
        b = farthest_point_sample(xyz, npoint, backend=backend)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert int(a.min()) >= 0 and int(a.max()) < xyz.shape[1]
    if backend in ("torch", "numba"):  # first index of the maximum among the points not chosen yet
        assert farthest_point_sample(same, 8, backend=backend).tolist() == [list(range(8))] * 2
        assert farthest_point_sample(same, 40, backend=backend).sort().values.tolist() == [list(range(40))] * 2
        first50 = farthest_point_sample(doubled, 50, backend=backend)
        assert int(first50.max()) < 50  # a duplicate never beats its earlier twin
        for pts, idx in zip(doubled.numpy(), farthest_point_sample(doubled, 60, backend=backend).numpy()):
            assert_valid_fps(pts, idx)


def test_fps_multithreaded_batch_equals_serial() -> None:
    xyz = torch.rand(9, 300, 3, generator=torch.Generator().manual_seed(5))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = farthest_point_sample(xyz, 32, backend="numba")
        torch.set_num_threads(3)
        threaded = farthest_point_sample(xyz, 32, backend="numba")
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(serial, threaded, rtol=0, atol=0)
    # and each cloud alone gives the same row (no cross-talk between clouds sharing a call)
    for b in range(9):
        torch.testing.assert_close(farthest_point_sample(xyz[b : b + 1], 32, backend="numba")[0], serial[b])


def test_fps_errors() -> None:
    xyz = torch.rand(2, 10, 3)
    with pytest.raises(ValueError, match="unknown FPS backend 'nope'.*torch.*fpsample"):
        farthest_point_sample(xyz, 4, backend="nope")
    with pytest.raises(ValueError, match="'pointnet2' is unavailable.*available here"):
        farthest_point_sample(xyz, 4, backend="pointnet2")
    with pytest.raises(ValueError, match="npoint=11 exceeds the 10 points"):
        farthest_point_sample(xyz, 11)
    with pytest.raises(ValueError, match="npoint must be an int >= 1"):
        farthest_point_sample(xyz, 0)
    with pytest.raises(ValueError, match=r"shape \(B, N, 3\), got \(10, 3\)"):
        farthest_point_sample(xyz[0], 4)
    with pytest.raises(ValueError, match="float tensor"):
        farthest_point_sample(xyz.long(), 4)
    assert farthest_point_sample(torch.rand(0, 10, 3), 4).shape == (0, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fps_cuda_backends() -> None:  # pragma: no cover - run where a GPU is lent
    xyz = torch.rand(4, 512, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = farthest_point_sample(xyz, 32, backend="torch")
    for b in available_fps_backends("cuda"):
        if not FPS_BACKENDS[b].exact:
            continue
        got = farthest_point_sample(xyz.cuda(), 32, backend=b)
        assert got.device.type == "cuda"
        if b != "pointnet2":  # pointnet2's kernel skips points within 0.032 of the origin
            torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=0)


# -- kNN ----------------------------------------------------------------------------------------------------------
def brute_knn(k: int, xyz: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    d = ((query.double().unsqueeze(2) - xyz.double().unsqueeze(1)) ** 2).sum(-1)
    return d.argsort(dim=-1, stable=True)[..., :k]


def test_knn_exact_sorted_and_chunked() -> None:
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(3, 300, 3, generator=g)
    query = torch.rand(3, 50, 3, generator=g)
    ref = brute_knn(16, xyz, query)
    full = knn_query(16, xyz, query)
    torch.testing.assert_close(full, ref, rtol=0, atol=0)
    chunked = knn_query(16, xyz, query, max_elements=3 * 300 * 7)  # 7 queries a chunk, last chunk partial
    torch.testing.assert_close(chunked, ref, rtol=0, atol=0)
    one_row = knn_query(16, xyz, query, max_elements=1)
    torch.testing.assert_close(one_row, ref, rtol=0, atol=0)
    d = torch.gather(torch.cdist(query, xyz), 2, full)
    assert (d[..., 1:] >= d[..., :-1]).all()


def test_knn_group_use_and_k_equals_n() -> None:
    xyz = torch.rand(2, 64, 3, generator=torch.Generator().manual_seed(4))
    centre_idx = farthest_point_sample(xyz, 8)
    centres = torch.gather(xyz, 1, centre_idx.unsqueeze(-1).expand(-1, -1, 3))
    idx = knn_query(64, xyz, centres)
    assert (idx[..., 0] == centre_idx).all()  # a centre is its own nearest neighbour
    assert (idx.sort(-1).values == torch.arange(64)).all()  # k == N: a permutation of all points
    torch.testing.assert_close(knn_query(5, xyz.double(), centres.double()), brute_knn(5, xyz, centres))


def test_knn_errors() -> None:
    xyz = torch.rand(2, 10, 3)
    with pytest.raises(ValueError, match="k=11 exceeds the 10 points"):
        knn_query(11, xyz, xyz)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        knn_query(0, xyz, xyz)
    with pytest.raises(ValueError, match="batch sizes differ"):
        knn_query(2, xyz, torch.rand(3, 4, 3))
    with pytest.raises(ValueError, match=r"query must be a tensor of shape \(B, N, 3\)"):
        knn_query(2, xyz, torch.rand(2, 4, 2))
