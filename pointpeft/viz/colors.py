"""Colour maps for point clouds: distinct categorical colours (patches, experts, classes) and height shading."""

from __future__ import annotations

import colorsys

import numpy as np

#: Colour of points that belong to no patch / have no label.
UNASSIGNED = np.array([0.78, 0.78, 0.78])

# matplotlib's tab10 (its grey swapped for navy: grey means 'unassigned') and the light half of tab20.
_BASE = np.array([
    [0.122, 0.467, 0.706], [1.000, 0.498, 0.055], [0.173, 0.627, 0.173], [0.839, 0.153, 0.157],
    [0.580, 0.404, 0.741], [0.549, 0.337, 0.294], [0.890, 0.467, 0.761], [0.102, 0.102, 0.451],
    [0.737, 0.741, 0.133], [0.090, 0.745, 0.812], [0.682, 0.780, 0.910], [1.000, 0.733, 0.471],
    [0.596, 0.875, 0.541], [1.000, 0.596, 0.588], [0.773, 0.690, 0.835], [0.769, 0.612, 0.580],
    [0.969, 0.714, 0.824], [0.859, 0.859, 0.553], [0.620, 0.855, 0.898],
])


def categorical_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours in [0, 1], (n, 3); the first 19 are tab10/tab20, then golden-ratio hues."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n <= len(_BASE):
        return _BASE[:n].copy()
    extra = []
    for i in range(n - len(_BASE)):
        h = (0.13 + i * 0.618033988749895) % 1.0
        s = 0.55 + 0.35 * ((i // 3) % 2)
        v = 0.95 - 0.25 * ((i // 2) % 2)
        extra.append(colorsys.hsv_to_rgb(h, s, v))
    return np.concatenate([_BASE, np.asarray(extra)], axis=0)


def label_colors(labels: np.ndarray, num_labels: int | None = None) -> np.ndarray:
    """Per-point colours (N, 3) for integer labels; negative labels get :data:`UNASSIGNED`."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    n = int(num_labels if num_labels is not None else (labels.max() + 1 if labels.size else 0))
    if labels.size and labels.max() >= n:
        raise ValueError(f"label {int(labels.max())} out of range for {n} colours")
    palette = np.concatenate([categorical_colors(max(n, 0)), UNASSIGNED[None]], axis=0)
    return palette[np.where(labels < 0, n, labels)]


def height_colors(points: np.ndarray, axis: int = 2, cmap: str = "viridis") -> np.ndarray:
    """Colours (N, 3) by the coordinate along ``axis`` (the up axis), to give a plain cloud some depth cue."""
    from matplotlib import colormaps

    points = np.asarray(points, dtype=np.float64)
    h = points[:, axis] if len(points) else np.zeros(0)
    span = float(h.max() - h.min()) if h.size else 0.0
    t = (h - h.min()) / span if span > 0 else np.full_like(h, 0.5)
    return np.asarray(colormaps[cmap](0.15 + 0.75 * t))[:, :3]
