"""Cloud/mesh readers and the area-uniform mesh sampler of pointpeft.data.point_files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pointpeft.data.point_files import (
    load_points,
    read_cloud,
    read_off,
    read_pcd,
    read_ply,
    sample_mesh_surface,
    triangle_areas,
    write_ply,
)
from pointpeft.errors import DataError

REPO = Path(__file__).resolve().parents[1]
MESHES = Path(os.environ.get("POINTPEFT_SHARED_DATA", REPO.parent / "shared" / "data")) / "meshes"


def _barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points p (n, 3) in triangle abc (all in one plane)."""
    m = np.stack([b - a, c - a], axis=1)  # (3, 2)
    uv, *_ = np.linalg.lstsq(m, (p - a).T, rcond=None)
    return np.stack([1 - uv[0] - uv[1], uv[0], uv[1]], axis=1)


def test_mesh_sampling_is_uniform_by_area_and_on_the_surface() -> None:
    # two triangles in the plane z = 0 with areas 0.5 and 1.5 (ratio 1:3), sharing no points
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [5, 0, 0], [2, 1, 0]], dtype=np.float64)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    np.testing.assert_allclose(triangle_areas(v, f), [0.5, 1.5])
    pts = sample_mesh_surface(v, f, 40_000, seed=1)
    assert pts.shape == (40_000, 3) and pts.dtype == np.float32
    in_first = pts[:, 0] < 1.5
    assert abs(in_first.mean() - 0.25) < 0.01  # 4 sigma of a binomial with n=40k is 0.0087
    for tri, sel in ((f[0], in_first), (f[1], ~in_first)):
        bc = _barycentric(pts[sel].astype(np.float64), *v[tri])
        assert (bc > -1e-5).all() and np.allclose(pts[sel, 2], 0)
        # uniform inside the triangle: the barycentric coordinates each average 1/3
        np.testing.assert_allclose(bc.mean(axis=0), [1 / 3] * 3, atol=0.01)
    np.testing.assert_array_equal(pts, sample_mesh_surface(v, f, 40_000, seed=1))
    assert not np.array_equal(pts, sample_mesh_surface(v, f, 40_000, seed=2))


def test_mesh_sampling_rejects_degenerate_meshes() -> None:
    v = np.zeros((3, 3))
    with pytest.raises(DataError, match="zero"):
        sample_mesh_surface(v, np.array([[0, 1, 2]]), 10, source="flat.off")
    with pytest.raises(DataError, match="out of range"):
        sample_mesh_surface(np.eye(3), np.array([[0, 1, 3]]), 10)


def test_off_reader_handles_modelnet_quirks(tmp_path: Path) -> None:
    p = tmp_path / "quad.off"
    # counts glued to the header (a known ModelNet defect), a comment, one quad (two triangles) + one triangle
    p.write_text("OFF5 2 0\n# comment\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n4 0 1 2 3\n3 0 1 4 255 0 0\n")
    m = read_off(p)
    assert m.points.shape == (5, 3) and m.is_mesh
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 4]])
    bad = tmp_path / "bad.off"
    bad.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n")
    with pytest.raises(DataError, match="bad.off.*truncated"):
        read_off(bad)
    with pytest.raises(DataError, match="not an OFF"):
        read_off(_write(tmp_path / "x.off", "PLY\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_real_modelnet_mesh_is_sampled_to_points() -> None:
    mesh = MESHES / "bathtub_0001.off"
    if not mesh.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{mesh} missing — required when CI=true")
        pytest.skip(f"real meshes not found at {MESHES}")
    m = read_off(mesh)
    assert m.is_mesh and m.faces.max() < len(m.points)
    pts, cols = load_points(mesh, num_points=2048, seed=0, normalize=True)
    assert pts.shape == (2048, 3) and cols is None
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1).max(), 1.0, atol=1e-5)
    # every sample lies on the surface: near some vertex-spanned triangle (check distance to the closest vertex
    # is below the longest edge of the mesh)
    edges = np.linalg.norm(m.points[m.faces[:, 0]] - m.points[m.faces[:, 1]], axis=1).max()
    raw = sample_mesh_surface(m.points, m.faces, 500, seed=0)
    d = np.sqrt(((raw[:, None, :] - m.points[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert (d <= edges + 1e-4).all()


def test_ply_binary_round_trip_with_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3)).astype(np.float32)
    cols = rng.random((100, 3))
    path = write_ply(tmp_path / "c.ply", pts, cols)
    back = read_ply(path)
    np.testing.assert_array_equal(back.points, pts)
    np.testing.assert_allclose(back.colors, np.round(cols * 255) / 255, atol=1e-9)
    assert not back.is_mesh
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_ply_ascii_mesh_and_errors(tmp_path: Path) -> None:
    text = ("ply\nformat ascii 1.0\ncomment x\nelement vertex 4\nproperty float x\nproperty float y\n"
            "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
            "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    m = read_ply(_write(tmp_path / "m.ply", text))
    assert m.is_mesh
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3]])
    pts, _ = load_points(tmp_path / "m.ply", num_points=300)
    assert pts.shape == (300, 3) and np.allclose(pts[:, 2], 0) and pts[:, :2].min() >= 0 and pts[:, :2].max() <= 1
    with pytest.raises(DataError, match="trunc.ply.*truncated"):
        read_ply(_write(tmp_path / "trunc.ply", text.replace("0 1 0\n4 0 1 2 3\n", "")))
    with pytest.raises(DataError, match="not a PLY"):
        read_ply(_write(tmp_path / "no.ply", "hello\n"))


def test_pcd_ascii_and_binary(tmp_path: Path) -> None:
    pts = np.array([[0, 0, 0], [1, 2, 3], [-1, 0.5, 2]], dtype=np.float32)
    head = "VERSION .7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 3\nHEIGHT 1\nPOINTS 3\n"
    rgb = np.array([0xFF0000, 0x00FF00, 0x0000FF], dtype=np.uint32).view(np.float32)
    rows = "\n".join(" ".join(f"{v:.9g}" for v in (*p, c)) for p, c in zip(pts, rgb))
    a = read_pcd(_write(tmp_path / "a.pcd", head + "DATA ascii\n" + rows + "\n"))
    np.testing.assert_allclose(a.points, pts)
    np.testing.assert_allclose(a.colors, np.eye(3))
    body = np.concatenate([pts, rgb[:, None]], axis=1).astype("<f4").tobytes()
    (tmp_path / "b.pcd").write_bytes((head + "DATA binary\n").encode() + body)
    b = read_pcd(tmp_path / "b.pcd")
    np.testing.assert_array_equal(b.points, pts)
    np.testing.assert_allclose(b.colors, np.eye(3))


def test_npy_xyz_and_bad_inputs(tmp_path: Path) -> None:
    pts = np.random.default_rng(1).random((50, 6)).astype(np.float32)
    np.save(tmp_path / "p.npy", pts)
    np.testing.assert_array_equal(read_cloud(tmp_path / "p.npy").points, pts[:, :3])
    np.savetxt(tmp_path / "p.txt", pts, delimiter=",")
    np.testing.assert_allclose(read_cloud(tmp_path / "p.txt").points, pts[:, :3], rtol=1e-6)
    sub, _ = load_points(tmp_path / "p.npy", num_points=20)
    assert sub.shape == (20, 3) and np.isin(sub[:, 0], pts[:, 0]).all()  # a subset, no new points
    with pytest.raises(DataError, match="p.npy.*50 points, 60 requested"):
        load_points(tmp_path / "p.npy", num_points=60)
    bad = pts.copy()
    bad[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="nan.npy.*point 7"):
        read_cloud(tmp_path / "nan.npy")
    with pytest.raises(DataError, match="unsupported file type"):
        read_cloud(_write(tmp_path / "x.obj", "v 0 0 0\n"))
    with pytest.raises(DataError, match="no such file"):
        read_cloud(tmp_path / "missing.ply")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(DataError, match="flat.npy.*shape"):
        read_cloud(tmp_path / "flat.npy")
