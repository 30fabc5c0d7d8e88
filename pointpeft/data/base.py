"""Shared pieces of the point-cloud data sets: the Dataset base class, normalisation, resampling and checks.

Every reader returns ``(points: FloatTensor (npoints, C), label: int)`` with C = 3 (or 6 with normals), keeps all
labels in ``self.labels`` (for few-shot and balanced sampling) and names its classes in ``self.classes``.
Resampling is decided once, when a split is loaded (or per item for readers too large for memory), and is
deterministic: FPS starts from point 0 (like pointnet2_ops), random sampling draws from ``(seed, index)``.
A cloud with fewer stored points than ``npoints`` is an error: nothing is upsampled, so no point is duplicated
silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.errors import ConfigError, DataError
from pointpeft.utils.misc import get_logger

logger = get_logger("data")

SAMPLINGS = ("fps", "random", "first")
README_HINT = "see datasets/README.md for the expected layouts"

Transform = Callable[..., torch.Tensor]


class PointCloudDataset(Dataset):
    """Base class: labelled point clouds held in memory (``self.points``) or loaded per item (override
    :meth:`get_points`). ``__getitem__`` applies the transforms to a fresh tensor, never to the stored array."""

    def __init__(self, classes: Sequence[str], labels: np.ndarray, transforms: Any = None,
                 points: np.ndarray | None = None, source: str = "") -> None:
        from pointpeft.data.transforms import build_transforms

        self.classes = [str(c) for c in classes]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.points = points
        self.source = source
        self.transform = build_transforms(transforms)
        if points is not None and len(points) != len(self.labels):
            raise DataError(f"{source}: {len(points)} clouds but {len(self.labels)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def get_points(self, index: int) -> np.ndarray:
        """The resampled, normalised cloud ``index`` (before transforms), as a (npoints, C) float32 array."""
        assert self.points is not None
        return self.points[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of size {len(self)}")
        pts = torch.from_numpy(np.array(self.get_points(index), dtype=np.float32, copy=True))
        if self.transform is not None:
            pts = self.transform(pts)
        return pts, int(self.labels[index])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, classes={self.num_classes}, source={self.source!r}, "
                f"transform={self.transform!r})")


# -- argument checks -------------------------------------------------------------------------------------------

def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_normalize(value: Any) -> bool | str:
    if value not in (True, False, "auto"):
        raise ConfigError(f"normalize must be true, false or 'auto', got {value!r}")
    return value


def resolve_root(root: str | os.PathLike) -> Path:
    """Relative roots resolve against the current directory; ``~`` is expanded."""
    return Path(root).expanduser().resolve()


def missing_root_error(what: str, root: Path, expected: str) -> DataError:
    return DataError(f"{what} not found: looked at {root} (expected {expected}); {README_HINT}")


# -- numeric checks --------------------------------------------------------------------------------------------

def check_finite(points: np.ndarray, source: str, offset: int = 0) -> None:
    """Raise naming the file and the first shape index that holds NaN/inf. ``points`` is (M, N, C) or (N, C)."""
    if points.ndim == 2:
        if not np.isfinite(points).all():
            raise DataError(f"{source}: shape {offset} has NaN/inf coordinates")
        return
    bad = ~np.isfinite(points).reshape(len(points), -1).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: shape {offset + i} has NaN/inf coordinates ({int(bad.sum())} bad shapes)")


def check_labels(labels: np.ndarray, num_classes: int, source: str, offset: int = 0) -> np.ndarray:
    """Labels as int64; raise naming the file and index of the first label outside [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            i = int(np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))[0])
            raise DataError(f"{source}: label at index {offset + i} is not an integer ({labels[i]!r})")
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{source}: labels have dtype {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: label {int(labels[i])} at index {offset + i} is outside 0..{num_classes - 1}")
    return labels


# -- normalisation ---------------------------------------------------------------------------------------------

def pc_normalize(points: np.ndarray) -> np.ndarray:
    """Point-MAE's pc_normalize on the xyz columns of (N, C) or (M, N, C): centre on the mean, farthest point at 1."""
    out = np.array(points, dtype=np.float32, copy=True)
    xyz = out[..., :3]
    xyz -= xyz.mean(axis=-2, keepdims=True)
    radius = np.sqrt((xyz**2).sum(-1)).max(axis=-1)[..., None, None]
    xyz /= np.where(radius > 0, radius, 1.0)
    return out


def is_normalized(points: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Per shape: is it centred (|mean| < tol) with its farthest point at radius 1 (± tol)?"""
    xyz = np.asarray(points[..., :3], dtype=np.float64)
    centre = np.abs(xyz.mean(axis=-2)).max(axis=-1)
    radius = np.sqrt((xyz**2).sum(-1)).max(axis=-1)
    return (centre < tol) & (np.abs(radius - 1.0) < tol)


def normalize_clouds(points: np.ndarray, mode: bool | str) -> np.ndarray:
    """``mode`` True: normalise every shape; False: none; 'auto': only shapes that are not already unit-sphere
    normalised, so a source that already is (the real HDF5 copy) stays bit-exact."""
    if mode is False:
        return points
    if mode is True:
        return pc_normalize(points)
    todo = ~is_normalized(points) if points.ndim == 3 else np.array(not is_normalized(points))
    if points.ndim == 2:
        return pc_normalize(points) if bool(todo) else points
    if todo.any():
        points = np.array(points, copy=True)
        points[todo] = pc_normalize(points[todo])
    return points


# -- resampling ------------------------------------------------------------------------------------------------

def too_few_points_error(source: str, have: int, npoints: int, index: int | None = None) -> DataError:
    where = f"{source}" + (f" shape {index}" if index is not None else "")
    return DataError(f"{where}: has {have} points, npoints={npoints} requested; choose npoints <= {have} "
                     "(clouds are never upsampled)")


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of random sampling for shape ``index``: depends only on (seed, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]))


def fps_indices(xyz: np.ndarray, npoints: int, chunk: int | None = None, progress: bool = False) -> np.ndarray:
    """FPS indices (M, npoints) of (M, N, 3) clouds via pointpeft.ops, in chunks that bound memory."""
    from pointpeft.ops import farthest_point_sample

    m, n = xyz.shape[:2]
    chunk = chunk or max(1, min(m, 4_000_000 // max(n, 1)))
    out = np.empty((m, npoints), dtype=np.int64)
    starts = range(0, m, chunk)
    if progress and m > chunk:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"FPS {n}->{npoints}", unit="chunk", leave=False)
    for s in starts:
        block = torch.from_numpy(np.ascontiguousarray(xyz[s : s + chunk, :, :3], dtype=np.float32))
        out[s : s + chunk] = farthest_point_sample(block, npoints).cpu().numpy()
    return out


def resample_clouds(points: np.ndarray, npoints: int, sampling: str, seed: int, source: str,
                    offset: int = 0, progress: bool = False) -> np.ndarray:
    """(M, N, C) -> (M, npoints, C). Unchanged (the same array) when N == npoints."""
    m, n = points.shape[:2]
    if n == npoints:
        return points
    if n < npoints:
        raise too_few_points_error(source, n, npoints)
    if sampling == "first":
        return np.ascontiguousarray(points[:, :npoints])
    if sampling == "random":
        idx = np.stack([sample_rng(seed, offset + i).choice(n, npoints, replace=False) for i in range(m)])
    else:
        idx = fps_indices(points, npoints, progress=progress)
    return np.take_along_axis(points, idx[:, :, None], axis=1)


def resample_cloud(points: np.ndarray, npoints: int, sampling: str, seed: int, index: int, source: str) -> np.ndarray:
    """One (N, C) cloud -> (npoints, C), the same rule as :func:`resample_clouds` for shape ``index``."""
    n = points.shape[0]
    if n == npoints:
        return points
    if n < npoints:
        raise too_few_points_error(source, n, npoints, index)
    if sampling == "first":
        return points[:npoints]
    if sampling == "random":
        return points[sample_rng(seed, index).choice(n, npoints, replace=False)]
    return points[fps_indices(points[None], npoints)[0]]


# -- HDF5 ------------------------------------------------------------------------------------------------------

def read_h5(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read whole datasets from an HDF5 file; a missing, corrupt or truncated file or key names file and field."""
    import h5py

    if not path.is_file():
        raise DataError(f"HDF5 file not found: {path}; {README_HINT}")
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys())
            for key in (*required, *optional):
                if key not in f:
                    if key in required:
                        raise DataError(f"{path}: missing field {key!r} (fields present: {keys})")
                    continue
                try:
                    out[key] = f[key][...]
                except (OSError, ValueError, TypeError, KeyError) as e:
                    raise DataError(f"{path}: cannot read field {key!r} (corrupt or truncated?): {e}") from None
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable HDF5 file (corrupt or truncated?): {e}") from None
    return out


def check_cloud_array(data: np.ndarray, field: str, source: str, min_channels: int = 3) -> np.ndarray:
    """(M, N, C>=min_channels) floating array, else an error naming file and field."""
    if data.ndim != 3 or data.shape[-1] < min_channels or data.shape[1] < 1:
        raise DataError(f"{source}: field {field!r} has shape {tuple(data.shape)}, expected (shapes, points, "
                        f"{min_channels}+)")
    if data.dtype.kind not in "fiu":
        raise DataError(f"{source}: field {field!r} has dtype {data.dtype}, expected floats")
    return data.astype(np.float32, copy=False)


def check_label_array(label: np.ndarray, n: int, source: str) -> np.ndarray:
    """Labels (n,) or (n, 1) -> (n,), else an error naming file and field."""
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 1 or label.shape[0] != n:
        raise DataError(f"{source}: field 'label' has shape {tuple(label.shape)}, expected ({n},) or ({n}, 1) "
                        f"to match 'data'")
    return label


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a small text file (a list file or class names)."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e})") from None
