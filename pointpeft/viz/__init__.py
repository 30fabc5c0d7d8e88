"""Visualisation: point clouds rendered headless to PNG (Open3D in a child process, matplotlib fallback) or in a
window, FPS patches, Adapter-X routing per patch, MAE reconstructions, predictions, and run charts.

Rendering: :func:`render_panels` / :func:`show_panels` with :class:`Panel` and :class:`View`. Views of models:
:mod:`pointpeft.viz.views`. File reading and mesh sampling: :mod:`pointpeft.data.point_files`. Charts: :mod:`pointpeft.viz.plots`.
"""

from pointpeft.data.point_files import load_points, read_cloud, sample_mesh_surface, write_ply
from pointpeft.viz.camera import View
from pointpeft.viz.colors import categorical_colors, height_colors, label_colors
from pointpeft.viz.render import (
    Panel,
    compose,
    compute_layout,
    has_display,
    open3d_status,
    render_images,
    render_panels,
    resolve_backend,
    save_png,
    show_panels,
)

__all__ = [
    "Panel", "View", "categorical_colors", "compose", "compute_layout", "has_display", "height_colors",
    "label_colors", "load_points", "open3d_status", "read_cloud", "render_images", "render_panels",
    "resolve_backend", "sample_mesh_surface", "save_png", "show_panels", "write_ply",
]
