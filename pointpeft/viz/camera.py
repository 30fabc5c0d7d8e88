"""One camera convention for both renderers: a z-up world seen from azimuth/elevation, matplotlib-style.

``View(elev, azim, up)`` places the eye at ``(cos e cos a, cos e sin a, sin e)`` around the cloud after its ``up``
axis has been turned into z. Open3D's default camera looks down -z with y up, so :func:`camera_frame` rotates the
points into that frame; matplotlib's ``view_init(elev, azim)`` uses the same angles on the z-up points, so both
backends show the same side of the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pointpeft.errors import InputError

#: Proper rotations (det +1) taking the named up axis to +z.
_UP = {
    "z": np.eye(3),
    "y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),  # (x, y, z) -> (x, -z, y)
    "x": np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]),  # (x, y, z) -> (y, z, x)
    "-z": np.diag([1.0, -1, -1]),
    "-y": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "-x": np.array([[0.0, -1, 0], [0, 0, 1], [-1, 0, 0]]),
}


@dataclass(frozen=True)
class View:
    """Where the camera is: elevation and azimuth in degrees, and which data axis points up."""

    elev: float = 22.0
    azim: float = -60.0
    up: str = "z"

    def __post_init__(self) -> None:
        if self.up not in _UP:
            raise InputError(f"view up axis must be one of {sorted(_UP)}, got {self.up!r}")


def to_z_up(points: np.ndarray, up: str = "z") -> np.ndarray:
    """Rotate (N, 3) points so that the ``up`` axis becomes +z (a proper rotation: no mirror image)."""
    if up not in _UP:
        raise InputError(f"up axis must be one of {sorted(_UP)}, got {up!r}")
    return np.asarray(points, dtype=np.float64) @ _UP[up].T


def camera_rotation(elev: float, azim: float) -> np.ndarray:
    """R (3, 3) whose rows are the camera's right, up and backward axes in z-up world coordinates."""
    e, a = np.deg2rad(elev), np.deg2rad(azim)
    back = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    right = np.array([-np.sin(a), np.cos(a), 0.0])
    up = np.cross(back, right)
    return np.stack([right, up, back])


def camera_frame(points: np.ndarray, view: View, centre: np.ndarray | None = None) -> np.ndarray:
    """Points in the camera frame of ``view`` (x right, y up, looking down -z), centred on ``centre`` (z-up
    coordinates; default: the middle of their own bounding box)."""
    p = to_z_up(points, view.up)
    if centre is None and len(p):
        centre = (p.min(axis=0) + p.max(axis=0)) / 2
    if centre is not None:
        p = p - centre
    return p @ camera_rotation(view.elev, view.azim).T


def common_box(clouds: list[np.ndarray], up: str = "z") -> tuple[np.ndarray, float]:
    """(centre, half of the largest side) of the z-up bounding box around all ``clouds``: one frame for panels
    that must share a scale (input vs reconstruction)."""
    pts = np.concatenate([to_z_up(c, up) for c in clouds])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-9)
