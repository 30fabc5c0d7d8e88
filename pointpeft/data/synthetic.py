"""``synthetic_shapes``: a procedural 3D shape data set that needs no download (the embedded default).

Twelve classes sampled on their surfaces, chosen in look-alike groups so that a coarse silhouette is not enough:
sphere / ellipsoid, cube / octahedron, cylinder / capsule / tube (open pipe), cone / pyramid,
torus / plane_with_hole, and helix. Every sample gets its own shape parameters (proportions within the class),
aspect jitter, scale, pose (a uniform random 3D rotation by default), Gaussian noise, and a partial occlusion
(the points beyond a random plane are removed, then ``npoints`` are drawn from the rest); clouds are finally
unit-sphere normalised.

Generation is vectorised (numpy, one call per class and block of samples) and deterministic: sample ``i`` of a
split depends only on ``(seed, split, i)`` and the generation knobs (it is drawn in a block of ``PER_BLOCK``
clouds per class seeded by ``(seed, split, block)``), so growing ``num_samples`` keeps the earlier samples. Labels are
``i % num_classes``: every split is class-balanced. A split is generated once per process (in-memory cache) and,
with ``cache_dir``, stored as an ``.npz`` written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pointpeft.data.base import PointCloudDataset, check_choice, check_positive_int, logger, pc_normalize
from pointpeft.errors import ConfigError
from pointpeft.registry import DATASETS
from pointpeft.utils.io import atomic_write

PER_BLOCK = 8  # clouds per class in one generation block
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_PER_CLASS = {"train": 80, "val": 20, "test": 20}
ROTATIONS = ("so3", "up", "none")

Sampler = Callable[[np.random.Generator, int, int], np.ndarray]


# -- surface samplers: (rng, n shapes, P points) -> (n, P, 3) in a canonical frame of size ~1 ----------------------

def _u(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=(n, 1))


def _sphere_dirs(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    v = rng.standard_normal((n, p, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def _pick_part(rng: np.random.Generator, areas: np.ndarray, p: int) -> np.ndarray:
    """Part index (n, p) drawn with probability proportional to the parts' areas (n, k): uniform on the surface."""
    cum = np.cumsum(areas, axis=1)
    cum = cum / cum[:, -1:]
    u = rng.random((areas.shape[0], p))
    return (u[:, :, None] > cum[:, None, :-1]).sum(-1)


def _select(part: np.ndarray, options: list[np.ndarray]) -> np.ndarray:
    return np.select([(part == k)[..., None] for k in range(len(options))], options)


def _weighted_subsample(rng: np.random.Generator, cand: np.ndarray, weight: np.ndarray, p: int) -> np.ndarray:
    """p of the candidates (n, M, 3) drawn without replacement with probability ~ weight (Gumbel top-k); turns a
    parametric sample into an area-uniform one, and weight 0 removes a candidate."""
    with np.errstate(divide="ignore"):
        keys = np.log(weight) - np.log(-np.log(rng.random(weight.shape).clip(1e-300)))
    idx = np.argpartition(-keys, p - 1, axis=1)[:, :p]
    return np.take_along_axis(cand, idx[..., None], axis=1)


def _disc(rng: np.random.Generator, n: int, p: int, radius: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    r = np.sqrt(rng.random((n, p))) * radius
    t = rng.uniform(0, 2 * np.pi, (n, p))
    return r * np.cos(t), r * np.sin(t)


def sphere(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    return _sphere_dirs(rng, n, p)


def ellipsoid(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    axes = np.concatenate([np.ones((n, 1)), _u(rng, n, 0.5, 0.72), _u(rng, n, 0.3, 0.5)], axis=1)[:, None, :]
    d = _sphere_dirs(rng, n, 3 * p)
    # area element of x = A d on the unit sphere: det(A) * |A^-1 d|
    weight = np.linalg.norm(d / axes, axis=-1)
    return _weighted_subsample(rng, d * axes, weight, p)


def cube(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    face = rng.integers(0, 6, (n, p))
    pts = rng.uniform(-1, 1, (n, p, 3))
    axis, sign = face // 2, np.where(face % 2 == 0, -1.0, 1.0)
    np.put_along_axis(pts, axis[..., None], sign[..., None], axis=-1)
    return pts


def octahedron(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    # uniform on the triangle x+y+z=1, x,y,z>=0 (sorted uniforms), then random octant signs
    u = np.sort(rng.random((n, p, 2)), axis=-1)
    bary = np.stack([u[..., 0], u[..., 1] - u[..., 0], 1 - u[..., 1]], axis=-1)
    signs = rng.choice([-1.0, 1.0], size=(n, p, 3))
    return bary * signs


def _cylinder_side(rng: np.random.Generator, n: int, p: int, radius: Any, half: Any) -> np.ndarray:
    t = rng.uniform(0, 2 * np.pi, (n, p))
    z = rng.uniform(-1, 1, (n, p)) * half
    return np.stack([radius * np.cos(t), radius * np.sin(t), z], axis=-1)


def _cap(rng: np.random.Generator, n: int, p: int, radius: Any, z: Any) -> np.ndarray:
    x, y = _disc(rng, n, p, radius)
    return np.stack([x, y, np.broadcast_to(z, x.shape)], axis=-1)


def cylinder(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    h = _u(rng, n, 0.6, 1.3)  # half height, radius 1
    areas = np.concatenate([4 * np.pi * h, np.full((n, 1), np.pi), np.full((n, 1), np.pi)], axis=1)
    part = _pick_part(rng, areas, p)
    return _select(part, [_cylinder_side(rng, n, p, 1.0, h), _cap(rng, n, p, 1.0, h), _cap(rng, n, p, 1.0, -h)])


def capsule(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    h = _u(rng, n, 0.6, 1.3)
    areas = np.concatenate([4 * np.pi * h, np.full((n, 2), 2 * np.pi)], axis=1)
    part = _pick_part(rng, areas, p)
    d = _sphere_dirs(rng, n, p)
    top = np.concatenate([d[..., :2], np.abs(d[..., 2:]) + h[..., None]], axis=-1)
    bottom = np.concatenate([d[..., :2], -np.abs(d[..., 2:]) - h[..., None]], axis=-1)
    return _select(part, [_cylinder_side(rng, n, p, 1.0, h), top, bottom])


def tube(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    h = _u(rng, n, 0.6, 1.3)
    rin = _u(rng, n, 0.6, 0.82)
    ring = np.pi * (1 - rin**2)
    areas = np.concatenate([4 * np.pi * h, 4 * np.pi * h * rin, ring, ring], axis=1)
    part = _pick_part(rng, areas, p)
    r_ring = np.sqrt(rng.uniform(rin**2, 1.0, (n, p)))
    t = rng.uniform(0, 2 * np.pi, (n, p))
    rim = np.stack([r_ring * np.cos(t), r_ring * np.sin(t), np.broadcast_to(h, t.shape)], axis=-1)
    rim_low = rim * np.array([1.0, 1.0, -1.0])
    return _select(part, [_cylinder_side(rng, n, p, 1.0, h), _cylinder_side(rng, n, p, rin, h), rim, rim_low])


def cone(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    height = _u(rng, n, 1.2, 2.2)  # base radius 1
    slant = np.sqrt(1 + height**2)
    areas = np.concatenate([np.pi * slant, np.full((n, 1), np.pi)], axis=1)
    part = _pick_part(rng, areas, p)
    s = np.sqrt(rng.random((n, p)))  # distance from the apex, area-uniform
    t = rng.uniform(0, 2 * np.pi, (n, p))
    side = np.stack([s * np.cos(t), s * np.sin(t), height / 2 - s * height], axis=-1)
    return _select(part, [side, _cap(rng, n, p, 1.0, -height / 2)])


def pyramid(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    height = _u(rng, n, 1.2, 2.2)  # square base of half-width 1
    slant = np.sqrt(1 + height**2)
    areas = np.concatenate([np.repeat(slant, 4, axis=1), np.full((n, 1), 4.0)], axis=1)  # 4 triangles, base
    part = _pick_part(rng, areas, p)
    apex = np.concatenate([np.zeros((n, 2)), height / 2], axis=1)[:, None, :]
    corners = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float)
    a = np.concatenate([corners[part % 4], np.broadcast_to(-height[..., None] / 2, (n, p, 1))], axis=-1)
    b = np.concatenate([corners[(part + 1) % 4], np.broadcast_to(-height[..., None] / 2, (n, p, 1))], axis=-1)
    u, v = rng.random((n, p, 1)), rng.random((n, p, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    tri = apex + u * (a - apex) + v * (b - apex)
    base = np.concatenate([rng.uniform(-1, 1, (n, p, 2)), np.broadcast_to(-height[..., None] / 2, (n, p, 1))], -1)
    return np.where((part == 4)[..., None], base, tri)


def torus(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    r = _u(rng, n, 0.18, 0.4)[:, :, None]  # tube radius, ring radius 1
    u = rng.uniform(0, 2 * np.pi, (n, 3 * p, 1))
    v = rng.uniform(0, 2 * np.pi, (n, 3 * p, 1))
    ring = 1 + r * np.cos(v)
    cand = np.concatenate([ring * np.cos(u), ring * np.sin(u), r * np.sin(v)], axis=-1)
    return _weighted_subsample(rng, cand, ring[..., 0], p)


def plane_with_hole(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    thick = _u(rng, n, 0.04, 0.12)[:, :, None]  # square plate, half-width 1, round hole
    hole = _u(rng, n, 0.3, 0.6)[:, :, None]
    m = 3 * p
    face = rng.uniform(-1, 1, (n, m, 2))
    side = rng.integers(0, 4, (n, m))  # outer rim
    along = rng.uniform(-1, 1, (n, m))
    rim_xy = np.where((side % 2 == 0)[..., None], np.stack([np.where(side == 0, 1.0, -1.0), along], -1),
                      np.stack([along, np.where(side == 1, 1.0, -1.0)], -1))
    t = rng.uniform(0, 2 * np.pi, (n, m))
    wall_xy = hole * np.stack([np.cos(t), np.sin(t)], -1)
    z = rng.uniform(-1, 1, (n, m, 1)) * thick / 2
    kind = rng.integers(0, 4, (n, m))  # 0 top, 1 bottom, 2 outer rim, 3 hole wall: candidates, reweighted below
    top = np.concatenate([face, np.broadcast_to(thick / 2, (n, m, 1))], -1)
    bottom = np.concatenate([face, np.broadcast_to(-thick / 2, (n, m, 1))], -1)
    cand = _select(kind, [top, bottom, np.concatenate([rim_xy, z], -1), np.concatenate([wall_xy, z], -1)])
    area = np.stack([np.broadcast_to(4 - np.pi * hole[..., 0] ** 2, (n, m)),
                     np.broadcast_to(4 - np.pi * hole[..., 0] ** 2, (n, m)),
                     np.broadcast_to(8 * thick[..., 0], (n, m)),
                     np.broadcast_to(2 * np.pi * hole[..., 0] * thick[..., 0], (n, m))], -1)
    weight = np.take_along_axis(area, kind[..., None], -1)[..., 0]
    in_hole = (kind < 2) & ((face**2).sum(-1) < hole[..., 0] ** 2)
    return _weighted_subsample(rng, cand, np.where(in_hole, 0.0, weight), p)


def helix(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    turns = _u(rng, n, 1.5, 3.5)
    height = _u(rng, n, 1.2, 2.6)
    r = _u(rng, n, 0.1, 0.22)[:, :, None]
    theta = rng.random((n, p)) * 2 * np.pi * turns
    c = height / (2 * np.pi * turns)  # rise per radian
    centre = np.stack([np.cos(theta), np.sin(theta), c * theta - height / 2], -1)
    tangent = np.stack([-np.sin(theta), np.cos(theta), np.broadcast_to(c, theta.shape)], -1)
    tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
    normal = np.stack([-np.cos(theta), -np.sin(theta), np.zeros_like(theta)], -1)
    binormal = np.cross(tangent, normal)
    phi = rng.uniform(0, 2 * np.pi, (n, p, 1))
    return centre + r * (np.cos(phi) * normal + np.sin(phi) * binormal)


#: class name -> surface sampler, in label order
SHAPES: dict[str, Sampler] = {
    "sphere": sphere, "ellipsoid": ellipsoid, "cube": cube, "octahedron": octahedron, "cylinder": cylinder,
    "capsule": capsule, "tube": tube, "cone": cone, "pyramid": pyramid, "torus": torus,
    "plane_with_hole": plane_with_hole, "helix": helix,
}
CLASSES = list(SHAPES)


# -- per-sample nuisances ----------------------------------------------------------------------------------------

def random_rotations(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    """(n, 3, 3): uniform on SO(3) (``so3``), about z only (``up``), or identity (``none``)."""
    if mode == "none":
        return np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    if mode == "up":
        t = rng.uniform(0, 2 * np.pi, n)
        c, s, z, o = np.cos(t), np.sin(t), np.zeros(n), np.ones(n)
        return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]  # Haar measure on O(3)
    det = np.linalg.det(q)
    q[:, :, 0] *= det[:, None]  # flip into SO(3)
    return q


def make_shapes(name: str, rng: np.random.Generator, n: int, npoints: int, *, rotation: str, aspect: float,
                noise: float, max_cut: float, cut_prob: float) -> np.ndarray:
    """n clouds (n, npoints, 3) float32 of class ``name`` with every per-sample nuisance applied."""
    p = int(math.ceil(npoints / (1.0 - max_cut))) + 8
    pts = SHAPES[name](rng, n, p)
    pts = pts * rng.uniform(1 - aspect, 1 + aspect, (n, 1, 3))
    rot = random_rotations(rng, n, rotation)
    pts = np.einsum("npj,nij->npi", pts, rot) * rng.uniform(0.6, 1.4, (n, 1, 1))
    pts = pts + rng.standard_normal(pts.shape) * rng.uniform(0, noise, (n, 1, 1))
    # occlusion: drop the fraction q of points beyond a random plane, keep the rest, draw npoints of them
    direction = _sphere_dirs(rng, n, 1)
    proj = (pts * direction).sum(-1)
    q = rng.uniform(0, max_cut, n) * (rng.random(n) < cut_prob)
    rank = proj.argsort(axis=1).argsort(axis=1)
    removed = rank >= np.ceil((1 - q[:, None]) * p)
    keys = rng.random((n, p)) + removed * 2.0
    idx = np.argsort(keys, axis=1)[:, :npoints]
    return pc_normalize(np.take_along_axis(pts, idx[..., None], axis=1).astype(np.float32))


# -- the data set --------------------------------------------------------------------------------------------------

_MEMORY: OrderedDict[str, np.ndarray] = OrderedDict()
_MEMORY_SLOTS = 8


def generate_split(seed: int, split: str, num_samples: int, npoints: int, knobs: dict[str, Any]) -> np.ndarray:
    """All clouds (num_samples, npoints, 3) of a split; labels are ``arange(num_samples) % num_classes``.

    Samples are made in whole blocks of ``PER_BLOCK`` clouds per class (the last block is made whole and cut),
    each block from its own seed, so sample i never depends on ``num_samples``.
    """
    classes = CLASSES[: knobs["num_classes"]]
    gen_knobs = {k: v for k, v in knobs.items() if k != "num_classes"}
    block = PER_BLOCK * len(classes)
    blocks = []
    for b in range(math.ceil(num_samples / block)):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, SPLITS[split], b]))
        out = np.empty((PER_BLOCK, len(classes), npoints, 3), dtype=np.float32)
        for c, name in enumerate(classes):
            out[:, c] = make_shapes(name, rng, PER_BLOCK, npoints, **gen_knobs)
        blocks.append(out.reshape(block, npoints, 3))  # row-major: index = k * num_classes + c
    return np.concatenate(blocks)[:num_samples]


@DATASETS.register("synthetic_shapes")
class SyntheticShapes(PointCloudDataset):
    """Procedural shapes: ``(points (npoints, 3), label)``, unit-sphere normalised, balanced, deterministic.

    Args:
        split: ``train`` | ``val`` | ``test`` (independent streams of the same distribution).
        num_samples: clouds in the split (default 80 per class for train, 20 for val/test).
        npoints: points per cloud.
        seed: changes every cloud; the same seed gives the same data on every machine.
        num_classes: use the first k of the 12 classes (2..12).
        rotation: pose — ``so3`` (uniform 3D rotation), ``up`` (about z only) or ``none``.
        aspect: per-axis stretch U[1 - aspect, 1 + aspect] applied before the pose.
        noise: Gaussian noise, sigma U[0, noise] per cloud (before normalisation; shapes are ~1 across).
        max_cut: the occluding plane removes a fraction U[0, max_cut] of the surface ...
        cut_prob: ... of this fraction of the clouds.
        cache_dir: also keep the generated split as an ``.npz`` here (atomic write); ``None``: memory only.
    """

    def __init__(self, split: str = "train", num_samples: int | None = None, npoints: int = 1024, seed: int = 0,
                 num_classes: int = len(CLASSES), rotation: str = "so3", aspect: float = 0.1, noise: float = 0.02,
                 max_cut: float = 0.35, cut_prob: float = 0.8, cache_dir: str | os.PathLike | None = None,
                 transforms: Any = None) -> None:
        check_choice("split", split, tuple(SPLITS))
        check_choice("rotation", rotation, ROTATIONS)
        if not 2 <= num_classes <= len(CLASSES):
            raise ConfigError(f"num_classes must be in 2..{len(CLASSES)}, got {num_classes}")
        if not 0 <= aspect < 1 or noise < 0 or not 0 <= max_cut < 0.9 or not 0 <= cut_prob <= 1:
            raise ConfigError("synthetic_shapes: need 0 <= aspect < 1, noise >= 0, 0 <= max_cut < 0.9, "
                              f"0 <= cut_prob <= 1 (got {aspect}, {noise}, {max_cut}, {cut_prob})")
        self.npoints = check_positive_int("npoints", npoints)
        if num_samples is None:
            num_samples = DEFAULT_PER_CLASS[split] * num_classes
        num_samples = check_positive_int("num_samples", num_samples)
        self.split, self.seed = split, int(seed)
        self.knobs = {"num_classes": int(num_classes), "rotation": rotation, "aspect": float(aspect),
                      "noise": float(noise), "max_cut": float(max_cut), "cut_prob": float(cut_prob)}
        key = json.dumps({"v": 1, "seed": self.seed, "split": split, "n": num_samples, "npoints": self.npoints,
                          **self.knobs}, sort_keys=True)
        points = self._load(key, num_samples, cache_dir)
        labels = np.arange(num_samples) % num_classes
        super().__init__(CLASSES[:num_classes], labels, transforms, points, source=f"synthetic_shapes/{split}")

    def _load(self, key: str, num_samples: int, cache_dir: str | os.PathLike | None) -> np.ndarray:
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            return _MEMORY[key]
        path = None
        points = None
        if cache_dir is not None:
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            path = Path(cache_dir).expanduser().resolve() / f"synthetic_shapes_{self.split}_{digest}.npz"
            points = _read_npz(path, key, (num_samples, self.npoints, 3))
        if points is None:
            points = generate_split(self.seed, self.split, num_samples, self.npoints, self.knobs)
            logger.info("generated synthetic_shapes %s: %d clouds x %d points", self.split, num_samples,
                        self.npoints)
            if path is not None:
                atomic_write(path, lambda tmp: _write_npz(tmp, points, key))
        points.setflags(write=False)
        _MEMORY[key] = points
        while len(_MEMORY) > _MEMORY_SLOTS:
            _MEMORY.popitem(last=False)
        return points


def _write_npz(tmp: str, points: np.ndarray, key: str) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, points=points, key=np.array(key))


def _read_npz(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or z["points"].shape != shape:
                return None
            return z["points"]
    except (OSError, ValueError, KeyError) as e:
        logger.warning("ignoring unreadable synthetic cache %s (%s)", path, e)
        return None
