"""Point-cloud augmentations, built from config nodes like ``[{type: scale_translate}, {type: jitter, sigma: 0.01}]``.

Each transform takes a cloud ``(N, C)`` or a batch ``(B, N, C)`` tensor and an optional ``torch.Generator``
(the global RNG otherwise); geometry acts on the xyz columns, rotations also turn normals (columns 3:6). In a
batch every cloud draws its own parameters, so the batched call equals the per-sample one in distribution.
Nothing is modified in place: the stored data set arrays are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from pointpeft.errors import ConfigError
from pointpeft.registry import TRANSFORMS
from pointpeft.utils.misc import get_logger

logger = get_logger("data")


def _uniform(shape: Sequence[int], low: float, high: float, g: torch.Generator | None,
             like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=g, dtype=torch.float32).to(like.device, like.dtype) * (high - low) + low


def _check_points(points: torch.Tensor) -> None:
    if points.ndim not in (2, 3) or points.shape[-1] < 3:
        raise ConfigError(f"transforms take (N, C>=3) or (B, N, C>=3) tensors, got shape {tuple(points.shape)}")


def _with_xyz(points: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    return xyz if points.shape[-1] == 3 else torch.cat([xyz, points[..., 3:]], dim=-1)


class PointTransform:
    """Base: subclasses implement ``apply(points, generator)`` on a validated tensor."""

    def __call__(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_points(points)
        return self.apply(points, generator)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} does not define apply()")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


@TRANSFORMS.register("scale_translate")
class ScaleTranslate(PointTransform):
    """Point-MAE's PointcloudScaleAndTranslate: per-axis scale U[scale_low, scale_high], shift U[-t, t]."""

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate_range: float = 0.2):
        if not 0 < scale_low <= scale_high:
            raise ConfigError(f"scale_translate: need 0 < scale_low <= scale_high, got {scale_low}, {scale_high}")
        self.scale_low, self.scale_high, self.translate_range = float(scale_low), float(scale_high), float(
            translate_range)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shape = (*points.shape[:-2], 1, 3)
        scale = _uniform(shape, self.scale_low, self.scale_high, generator, points)
        shift = _uniform(shape, -self.translate_range, self.translate_range, generator, points)
        return _with_xyz(points, points[..., :3] * scale + shift)


@TRANSFORMS.register("scale")
class Scale(PointTransform):
    """Isotropic scale U[low, high] (PointNet++'s random_scale_point_cloud)."""

    def __init__(self, low: float = 0.8, high: float = 1.25):
        if not 0 < low <= high:
            raise ConfigError(f"scale: need 0 < low <= high, got {low}, {high}")
        self.low, self.high = float(low), float(high)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        s = _uniform((*points.shape[:-2], 1, 1), self.low, self.high, generator, points)
        return _with_xyz(points, points[..., :3] * s)


@TRANSFORMS.register("translate")
class Translate(PointTransform):
    """Shift U[-translate_range, translate_range] per axis."""

    def __init__(self, translate_range: float = 0.2):
        self.translate_range = float(translate_range)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shift = _uniform((*points.shape[:-2], 1, 3), -self.translate_range, self.translate_range, generator, points)
        return _with_xyz(points, points[..., :3] + shift)


_AXES = {"x": 0, "y": 1, "z": 2}


@TRANSFORMS.register("rotate_up")
class RotateUp(PointTransform):
    """Random rotation about the up axis, angle U[-max_degrees, max_degrees] (180 = any angle).

    ScanObjectNN's up axis is y in Point-MAE's code (its PointcloudRotate turns about y). ModelNet40 copies differ:
    the 1024-point HDF5 copy in ../shared/data is z-up (bottles and lamps are tallest along z), so use ``axis: z``
    there. Normals (columns 3:6) turn with the points.
    """

    def __init__(self, axis: str | int = "y", max_degrees: float = 180.0):
        if isinstance(axis, str):
            if axis.lower() not in _AXES:
                raise ConfigError(f"rotate_up: axis must be x, y, z or 0..2, got {axis!r}")
            axis = _AXES[axis.lower()]
        if axis not in (0, 1, 2):
            raise ConfigError(f"rotate_up: axis must be x, y, z or 0..2, got {axis!r}")
        self.axis, self.max_degrees = int(axis), float(max_degrees)

    def matrices(self, batch_shape: Sequence[int], generator: torch.Generator | None,
                 like: torch.Tensor) -> torch.Tensor:
        """Rotation matrices (..., 3, 3) applied as ``points @ R`` (Point-MAE's convention)."""
        m = math.radians(self.max_degrees)
        theta = _uniform(tuple(batch_shape), -m, m, generator, like)
        c, s = torch.cos(theta), torch.sin(theta)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        a, b = [i for i in range(3) if i != self.axis]
        rows = [[None] * 3 for _ in range(3)]
        rows[self.axis][self.axis] = one
        for i in range(3):
            if i != self.axis:
                rows[self.axis][i] = rows[i][self.axis] = zero
        # y axis: [[c, 0, s], [0, 1, 0], [-s, 0, c]] as in Point-MAE; same pattern on the other planes.
        rows[a][a], rows[b][b] = c, c
        if self.axis == 1:
            rows[a][b], rows[b][a] = s, -s
        else:
            rows[a][b], rows[b][a] = -s, s
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        rot = self.matrices(points.shape[:-2], generator, points)
        xyz = points[..., :3] @ rot
        if points.shape[-1] >= 6:
            normals = points[..., 3:6] @ rot
            return torch.cat([xyz, normals, points[..., 6:]], dim=-1)
        return _with_xyz(points, xyz)


@TRANSFORMS.register("jitter")
class Jitter(PointTransform):
    """Gaussian noise N(0, sigma) per coordinate, clipped to [-clip, clip] (PointNet's jitter_point_cloud)."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05):
        if sigma < 0 or clip <= 0:
            raise ConfigError(f"jitter: need sigma >= 0 and clip > 0, got {sigma}, {clip}")
        self.sigma, self.clip = float(sigma), float(clip)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(points.shape[:-1] + (3,), generator=generator).to(points.device, points.dtype)
        noise = (noise * self.sigma).clamp(-self.clip, self.clip)
        return _with_xyz(points, points[..., :3] + noise)


@TRANSFORMS.register("random_point_dropout")
class RandomPointDropout(PointTransform):
    """PointNet++'s random_point_dropout: drop a fraction U[0, max_dropout_ratio] of the points by replacing them
    with the first point, so the shape (N, C) is kept."""

    def __init__(self, max_dropout_ratio: float = 0.875):
        if not 0 <= max_dropout_ratio < 1:
            raise ConfigError(f"random_point_dropout: max_dropout_ratio must be in [0, 1), got {max_dropout_ratio}")
        self.max_dropout_ratio = float(max_dropout_ratio)

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        ratio = _uniform((*points.shape[:-2], 1), 0.0, self.max_dropout_ratio, generator, points)
        drop = _uniform(points.shape[:-1], 0.0, 1.0, generator, points) <= ratio
        first = points[..., :1, :].expand_as(points)
        return torch.where(drop.unsqueeze(-1), first, points)


@TRANSFORMS.register("shuffle_points")
class ShufflePoints(PointTransform):
    """Random permutation of the point order (Point-MAE shuffles ScanObjectNN training clouds; FPS starts at
    point 0, so this changes the chosen patch centres)."""

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        keys = torch.rand(points.shape[:-1], generator=generator)
        perm = keys.argsort(dim=-1).to(points.device)
        return torch.gather(points, -2, perm.unsqueeze(-1).expand_as(points))


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(points, -2, idx.to(points.device).unsqueeze(-1).expand(*idx.shape, points.shape[-1]))


@TRANSFORMS.register("fps_resample")
class FpsResample(PointTransform):
    """The per-batch resampling of Point-MAE's fine-tuning runner (``tools/runner_finetune.py``): FPS
    ``min(npoints_fps, N)`` points from a random start (the data set shuffled the cloud), then a random ``npoints``
    of them in random order, so the model's own FPS (from point 0) picks new patch centres at every fetch.
    ``npoints`` None keeps the cloud's size (a data set that already stores ``npoints`` points).

    With ``npoints_fps`` None or >= N, FPS would keep every point (only reordering them), so it is skipped: the
    draw alone has the same distribution. In a batch every cloud draws its own subset (the original draws one
    index subset for the whole batch; each cloud's points have the same distribution either way).
    """

    def __init__(self, npoints: int | None = None, npoints_fps: int | None = None):
        if npoints is not None and (isinstance(npoints, bool) or not isinstance(npoints, int) or npoints < 1):
            raise ConfigError(f"fps_resample: npoints must be a positive integer or null, got {npoints!r}")
        if npoints_fps is not None and (isinstance(npoints_fps, bool) or not isinstance(npoints_fps, int)
                                        or npoints_fps < (npoints or 1)):
            raise ConfigError(f"fps_resample: npoints_fps must be an integer >= npoints={npoints}, got "
                              f"{npoints_fps!r}")
        self.npoints, self.npoints_fps = npoints, npoints_fps

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = points.shape[-2]
        npoints = n if self.npoints is None else self.npoints
        if n < npoints:
            raise ConfigError(f"fps_resample: the cloud has {n} points, fewer than npoints={npoints}")
        if self.npoints_fps is not None and n > self.npoints_fps:
            from pointpeft.ops import farthest_point_sample

            shuffled = _gather(points, torch.rand(points.shape[:-1], generator=generator).argsort(dim=-1))
            flat = shuffled.reshape(-1, n, shuffled.shape[-1])
            idx = farthest_point_sample(flat[..., :3].contiguous().float(), self.npoints_fps)
            points = _gather(flat, idx).reshape(*points.shape[:-2], self.npoints_fps, points.shape[-1])
        keys = torch.rand(points.shape[:-1], generator=generator)
        return _gather(points, keys.argsort(dim=-1)[..., :npoints])


#: where the FPS of the per-item resampling happens: on every fetch from every stored point (the original), or
#: once at load from point 0 (the larger set is then fixed per cloud; cheaper on CPU)
FPS_POOLS = ("per_item", "cached")


class TrainResampling:
    """A data set's ``npoints_fps`` / ``fps_pool`` options: how many points it keeps per cloud and the
    :class:`FpsResample` that draws ``npoints`` of them at every fetch. ``npoints_fps`` None = off (the stored
    cloud is resampled once to ``npoints``, FPS from point 0: the same points every epoch)."""

    def __init__(self, npoints: int, npoints_fps: int | None, fps_pool: str = "per_item") -> None:
        if fps_pool not in FPS_POOLS:
            raise ConfigError(f"fps_pool must be one of {list(FPS_POOLS)}, got {fps_pool!r}")
        if npoints_fps is not None and (isinstance(npoints_fps, bool) or not isinstance(npoints_fps, int)
                                        or npoints_fps < npoints):
            raise ConfigError(f"npoints_fps must be null or an integer >= npoints={npoints}, got {npoints_fps!r}")
        self.npoints, self.npoints_fps, self.fps_pool = npoints, npoints_fps, fps_pool
        self._warned = False
        self.transform = None
        if npoints_fps is not None:
            self.transform = FpsResample(npoints, npoints_fps if fps_pool == "per_item" else None)

    def keep(self, stored: int) -> int:
        """Points kept per cloud of ``stored`` points (never fewer than npoints: too few is the reader's error)."""
        if self.npoints_fps is None:
            return self.npoints
        if self.fps_pool == "per_item":
            if stored > self.npoints_fps and not self._warned:
                self._warned = True
                logger.warning("clouds of %d points with npoints_fps=%d: FPS runs at every fetch on the CPU (about "
                               "40 ms per 8192-point cloud); use data.num_workers, or fps_pool: cached to run it "
                               "once at load", stored, self.npoints_fps)
            return max(stored, self.npoints)
        return max(self.npoints, min(self.npoints_fps, stored))

    def transforms(self, nodes: Any) -> Any:
        """The data set's transforms with the resampling first (``nodes`` unchanged when off)."""
        if self.transform is None:
            return nodes
        if nodes is None:
            return [self.transform]
        if isinstance(nodes, (Mapping, str)) or callable(nodes):
            nodes = [nodes]
        return [self.transform, *nodes]


@TRANSFORMS.register("compose")
class Compose(PointTransform):
    """Apply transforms in order; ``transforms`` are config nodes or built transforms."""

    def __init__(self, transforms: Sequence[Any] = ()):
        self.transforms = [t if callable(t) else build_transform(t) for t in transforms]

    def apply(self, points: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for t in self.transforms:
            points = t(points, generator)
        return points

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_transform(node: Mapping[str, Any] | str) -> PointTransform:
    """One transform from ``{type: name, **params}`` (or just the name)."""
    if not isinstance(node, (Mapping, str)):
        raise ConfigError(f"a transform must be a mapping with 'type' or a name, got {node!r}")
    return TRANSFORMS.build(node)


def build_transforms(nodes: Any) -> PointTransform | None:
    """A list of nodes (or one node, or an already built transform) -> one Compose; None/empty -> None."""
    if nodes is None:
        return None
    if callable(nodes) and not isinstance(nodes, Mapping):
        return nodes
    if isinstance(nodes, (Mapping, str)):
        nodes = [nodes]
    if not isinstance(nodes, Sequence):
        raise ConfigError(f"transforms must be a list of config nodes, got {type(nodes).__name__}")
    if len(nodes) == 0:
        return None
    built = Compose(nodes)
    return built.transforms[0] if len(built) == 1 else built


class VoteAugmentation:
    """Test-time voting views, as Point-MAE's test_vote: each of ``num_votes`` views is a (random) subset of
    ``npoints`` points of the batch followed by ``transform`` (default scale_translate). ``include_identity``
    makes the first view the un-augmented input, so a vote never scores below the plain prediction by chance.

    ``views(points, generator)`` yields (B, npoints, C) tensors; ``predict(model, points)`` averages the softmax
    of ``model(view)`` over the views (mean of probabilities, a fixed number of votes, never a best-of).
    """

    def __init__(self, num_votes: int = 10, transforms: Any = ({"type": "scale_translate"},),
                 npoints: int | None = None, include_identity: bool = False) -> None:
        if num_votes < 1:
            raise ConfigError(f"num_votes must be >= 1, got {num_votes}")
        self.num_votes = int(num_votes)
        self.transform = build_transforms(list(transforms) if transforms is not None else None)
        self.npoints = npoints
        self.include_identity = bool(include_identity)

    def views(self, points: torch.Tensor, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        _check_points(points)
        batched = points if points.ndim == 3 else points.unsqueeze(0)
        n = batched.shape[1]
        npoints = self.npoints or n
        if npoints > n:
            raise ConfigError(f"VoteAugmentation: npoints={npoints} but the input has only {n} points")
        for k in range(self.num_votes):
            if k == 0 and self.include_identity:
                view = batched[:, :npoints]
            else:
                view = batched
                if npoints < n:
                    keys = torch.rand(batched.shape[:2], generator=generator)
                    idx = keys.argsort(dim=1)[:, :npoints].to(batched.device)
                    view = torch.gather(batched, 1, idx.unsqueeze(-1).expand(-1, -1, batched.shape[-1]))
                if self.transform is not None:
                    view = self.transform(view, generator)
            yield view if points.ndim == 3 else view[0]

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, points: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean class probabilities (B, num_classes) over the views."""
        total = None
        for view in self.views(points, generator):
            probs = torch.softmax(model(view).float(), dim=-1)
            total = probs if total is None else total + probs
        return total / self.num_votes
