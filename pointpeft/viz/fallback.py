"""Matplotlib renderer: a 3D scatter drawn offscreen (Agg), used wherever Open3D cannot render.

Same camera convention as the Open3D path (:mod:`pointpeft.viz.camera`), flat colours (no depth shading, so
colours that encode patches or experts stay exact), equal axis scales, no axes.
"""

from __future__ import annotations

import numpy as np

from pointpeft.viz.camera import View, to_z_up


def render_matplotlib(points: np.ndarray, colors: np.ndarray, width: int, height: int, view: View | None = None,
                      point_size: float = 3.0, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      box: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """One cloud -> (height, width, 3) uint8 image. ``point_size`` is in pixels, like Open3D's; ``box`` =
    (centre, half side) in z-up coordinates fixes the frame (default: the cloud's own bounding cube)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    view = view or View()
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=background)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1), projection="3d", facecolor=background)
    p = to_z_up(points, view.up)
    if len(p):
        if box is None:
            lo, hi = p.min(axis=0), p.max(axis=0)
            box = ((lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-9))
        centre, half = box
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=np.clip(colors, 0, 1), s=(point_size * 72.0 / dpi) ** 2 * 1.6,
                   marker="o", linewidths=0, depthshade=False)
        for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            setter(c - half, c + half)
    ax.set_box_aspect((1, 1, 1), zoom=1.25)
    ax.view_init(elev=view.elev, azim=view.azim)
    ax.set_axis_off()
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3]
    return _fit(img, height, width, background)


def _fit(img: np.ndarray, height: int, width: int, background: tuple[float, float, float]) -> np.ndarray:
    """Crop or pad to exactly (height, width): Agg may round the canvas size by a pixel."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.round(np.asarray(background) * 255).astype(np.uint8)
    h, w = min(height, img.shape[0]), min(width, img.shape[1])
    out[:h, :w] = img[:h, :w]
    return out
