"""The embedded synthetic_shapes data set: deterministic, balanced, normalised, hard for random features, learnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pointpeft.data import build_dataset
from pointpeft.data import synthetic as syn
from pointpeft.data.synthetic import CLASSES, SyntheticShapes
from pointpeft.errors import ConfigError


def _fresh(**kw) -> SyntheticShapes:
    syn._MEMORY.clear()
    return SyntheticShapes(**kw)


def test_classes_defaults_and_balance() -> None:
    assert len(CLASSES) >= 10 and len(set(CLASSES)) == len(CLASSES)
    tr = build_dataset({"type": "synthetic_shapes", "split": "train"})
    te = build_dataset({"type": "synthetic_shapes", "split": "test"})
    assert len(tr) == 80 * len(CLASSES) and len(te) == 20 * len(CLASSES)
    assert tr.num_classes == len(CLASSES) and tr.classes == CLASSES
    assert set(np.bincount(tr.labels).tolist()) == {80} and set(np.bincount(te.labels).tolist()) == {20}
    pts, label = tr[5]
    assert pts.shape == (1024, 3) and pts.dtype == torch.float32 and label == 5


def test_unit_sphere_and_finite() -> None:
    ds = build_dataset({"type": "synthetic_shapes", "num_samples": 120, "npoints": 300})
    p = ds.points
    assert p.shape == (120, 300, 3) and np.isfinite(p).all()
    np.testing.assert_allclose(np.linalg.norm(p, axis=-1).max(1), 1.0, atol=1e-5)
    assert np.abs(p.mean(1)).max() < 1e-5
    assert min(len(np.unique(c, axis=0)) for c in p) == 300  # no duplicated points


def test_deterministic_in_seed_split_index() -> None:
    a = _fresh(split="train", num_samples=100, npoints=256, seed=3)
    b = _fresh(split="train", num_samples=100, npoints=256, seed=3)
    assert np.array_equal(a.points, b.points) and torch.equal(a[17][0], b[17][0])
    longer = _fresh(split="train", num_samples=250, npoints=256, seed=3)
    assert np.array_equal(longer.points[:100], a.points)  # sample i does not depend on num_samples
    shorter = _fresh(split="train", num_samples=7, npoints=256, seed=3)
    assert np.array_equal(shorter.points, a.points[:7])
    other_seed = _fresh(split="train", num_samples=100, npoints=256, seed=4)
    other_split = _fresh(split="test", num_samples=100, npoints=256, seed=3)
    assert not np.allclose(other_seed.points, a.points) and not np.allclose(other_split.points, a.points)
    assert np.array_equal(other_split.labels, a.labels)


def test_memory_and_disk_cache(tmp_path: Path) -> None:
    a = _fresh(num_samples=48, npoints=64, cache_dir=str(tmp_path))
    files = list(tmp_path.glob("synthetic_shapes_train_*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob(".*.tmp"))
    assert SyntheticShapes(num_samples=48, npoints=64).points is a.points  # in-memory cache hit
    syn._MEMORY.clear()
    b = SyntheticShapes(num_samples=48, npoints=64, cache_dir=str(tmp_path))
    assert np.array_equal(a.points, b.points)
    files[0].write_bytes(b"corrupt")
    syn._MEMORY.clear()
    c = SyntheticShapes(num_samples=48, npoints=64, cache_dir=str(tmp_path))  # unreadable cache: regenerated
    assert np.array_equal(a.points, c.points)
    with pytest.raises(ValueError):
        a.points[0, 0, 0] = 5.0  # the shared cached array is read-only


def test_knobs_and_errors() -> None:
    easy = _fresh(num_samples=24, npoints=1024, rotation="none", noise=0.0, max_cut=0.0, aspect=0.0)
    radii = np.linalg.norm(easy.points[0], axis=1)  # a clean sphere (centred on its sampled points' mean)
    assert abs(radii.max() - 1.0) < 1e-5 and radii.std() < 0.05 and radii.min() > 0.8
    cube = easy.points[CLASSES.index("cube")]
    lo, hi = cube.min(0), cube.max(0)  # axis aligned, equal sides, ~1/6 of the points on each face
    assert np.ptp(hi - lo) < 1e-5
    on_face = (np.isclose(cube, lo, atol=1e-5) | np.isclose(cube, hi, atol=1e-5)).sum(0)
    assert (on_face > 0.25 * len(cube)).all()
    few = build_dataset({"type": "synthetic_shapes", "num_classes": 4, "split": "val"})
    assert few.classes == CLASSES[:4] and len(few) == 80
    for bad in ({"rotation": "any"}, {"num_classes": 1}, {"max_cut": 0.95}, {"split": "dev"},
                {"npoints": 0}, {"num_sample": 5}):
        with pytest.raises(ConfigError):
            build_dataset({"type": "synthetic_shapes", **bad})


def _pooled_features(model: torch.nn.Module, points: np.ndarray) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(points), 120):
            x = torch.from_numpy(np.array(points[i : i + 120]))
            out.append(model.forward_head(model.forward_features(x), pre_logits=True))
    return torch.cat(out).numpy()


def _probe(ftr: np.ndarray, ytr: np.ndarray, fte: np.ndarray, yte: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with threadpool_limits(1):  # BLAS threads beyond the 2 cores made this fit 500x slower
        return float(clf.fit(ftr, ytr).score(fte, yte))


def _invariant_features(p: np.ndarray) -> np.ndarray:
    """Rotation-invariant descriptors: radius histogram, D2 distance histogram, PCA spectrum."""
    r = np.linalg.norm(p, axis=-1)
    h_r = np.stack([np.histogram(x, bins=16, range=(0, 1))[0] for x in r]) / p.shape[1]
    i = np.random.default_rng(0).integers(0, p.shape[1], (2, 2000))
    d = np.linalg.norm(p[:, i[0]] - p[:, i[1]], axis=-1)
    h_d = np.stack([np.histogram(x, bins=16, range=(0, 2))[0] for x in d]) / 2000
    ev = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", p, p) / p.shape[1])
    return np.concatenate([h_r, h_d, ev / ev.sum(1, keepdims=True)], 1)


def test_not_trivially_separable_but_learnable() -> None:
    from pointpeft.models.point_transformer import build_point_transformer

    tr = build_dataset({"type": "synthetic_shapes", "split": "train"})
    te = build_dataset({"type": "synthetic_shapes", "split": "test"})
    torch.manual_seed(0)
    model = build_point_transformer("point_mae_tiny", num_classes=tr.num_classes).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    random_probe = _probe(_pooled_features(model, tr.points), tr.labels, _pooled_features(model, te.points),
                          te.labels)
    # A linear probe on a random frozen backbone must not solve it ...
    assert random_probe < 0.75, random_probe
    # ... yet the classes are separable from the geometry: rotation-invariant shape statistics + the same
    # linear classifier do far better (chance is 1/12).
    invariant = _probe(_invariant_features(tr.points), tr.labels, _invariant_features(te.points), te.labels)
    assert invariant > 0.65 and invariant > random_probe + 0.1, (invariant, random_probe)
