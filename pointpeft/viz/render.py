"""Render point clouds to images: Open3D offscreen when it works here, matplotlib otherwise; several clouds side
by side with titles and a legend in one PNG; an interactive window when a display exists.

Open3D runs in a child process (``_o3d_worker.py``): its OpenGL paths can segfault, and a crash must cost the
caller a fallback, not its life. Whether it works is probed once per process (a tiny render in a subprocess) and
cached; when it does not, the matplotlib renderer (:mod:`pointpeft.viz.fallback`) takes over and one log line says
so. ``POINTPEFT_VIZ_BACKEND=matplotlib|open3d`` overrides the automatic choice.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointpeft.errors import InputError
from pointpeft.utils.io import atomic_write
from pointpeft.utils.misc import get_logger
from pointpeft.viz.camera import View, camera_frame, common_box
from pointpeft.viz.colors import height_colors
from pointpeft.viz.fallback import render_matplotlib

logger = get_logger("viz")

BACKENDS = ("auto", "open3d", "matplotlib")
WORKER = Path(__file__).with_name("_o3d_worker.py")
EXIT_NO_DISPLAY = 4  # the worker's exit code when $DISPLAY cannot be opened (kept equal to _o3d_worker's)
PROBE_TIMEOUT_S = 120.0
RENDER_TIMEOUT_S = 600.0

_open3d_state: tuple[bool, str] | None = None  # cached probe answer: (works, reason)
_told_fallback = False


@dataclass
class Panel:
    """One cloud in a figure: points (N, 3), per-point colours (N, 3) in [0, 1] (None: shaded by height), a title,
    and the title's colour (e.g. green/red for a right/wrong prediction)."""

    points: np.ndarray
    colors: np.ndarray | None = None
    title: str = ""
    title_color: tuple[float, float, float] = (0.1, 0.1, 0.1)

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise InputError(f"panel {self.title!r}: points must be a non-empty (N, 3) array, got {pts.shape}")
        if not np.isfinite(pts).all():
            raise InputError(f"panel {self.title!r}: points contain NaN or inf")
        self.points = pts
        if self.colors is not None:
            cols = np.asarray(self.colors, dtype=np.float64)
            if cols.shape != pts.shape:
                raise InputError(f"panel {self.title!r}: colors must be (N, 3) like points {pts.shape}, "
                                 f"got {cols.shape}")
            self.colors = cols


# -- backend choice --------------------------------------------------------------------------------------------

def _probe_open3d() -> tuple[bool, str]:
    if importlib.util.find_spec("open3d") is None:
        return False, "open3d is not installed (pip install 'pointpeft[viz]')"
    try:
        res = subprocess.run([sys.executable, str(WORKER), "probe"], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S, env=_worker_env())
    except subprocess.TimeoutExpired:
        return False, f"the Open3D probe did not finish in {PROBE_TIMEOUT_S:.0f} s"
    except OSError as e:
        return False, f"could not start the Open3D probe: {e}"
    if res.returncode == 0 and "OK" in res.stdout:
        return True, "Open3D offscreen rendering works"
    tail = (res.stdout + res.stderr).strip().splitlines()[-1:] or [""]
    return False, f"the Open3D probe failed (exit code {res.returncode}: {tail[0][:200]})"


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("XDG_RUNTIME_DIR"):  # silences a harmless EGL complaint when none is set
        env["XDG_RUNTIME_DIR"] = tempfile.gettempdir()
    return env


def open3d_status(refresh: bool = False) -> tuple[bool, str]:
    """(works, reason): can Open3D render offscreen here? Probed once per process in a subprocess, then cached."""
    global _open3d_state
    if _open3d_state is None or refresh:
        _open3d_state = _probe_open3d()
        logger.debug("Open3D probe: %s", _open3d_state[1])
    return _open3d_state


def resolve_backend(backend: str = "auto") -> str:
    """The renderer to use: ``open3d`` or ``matplotlib``. ``auto`` (and the env override) decides by the probe."""
    global _told_fallback
    if backend not in BACKENDS:
        raise InputError(f"render backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("POINTPEFT_VIZ_BACKEND", "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise InputError(f"POINTPEFT_VIZ_BACKEND must be one of {BACKENDS}, got {env!r}")
        backend = env
    if backend == "matplotlib":
        return backend
    works, reason = open3d_status()
    if works:
        return "open3d"
    if not _told_fallback:
        logger.warning("point clouds are drawn with matplotlib: %s", reason)
        _told_fallback = True
    return "matplotlib"


def _mark_open3d_broken(reason: str) -> None:
    global _open3d_state, _told_fallback
    _open3d_state = (False, reason)
    logger.warning("Open3D rendering failed (%s); falling back to matplotlib for this process", reason)
    _told_fallback = True


# -- rendering -------------------------------------------------------------------------------------------------

def default_point_size(width: int) -> float:
    """Point size in pixels that reads well for ~1k-point clouds at this panel width."""
    return max(2.0, round(width / 80.0, 1))


def _colors_of(panel: Panel, view: View) -> np.ndarray:
    if panel.colors is not None:
        return panel.colors
    axis = {"x": 0, "y": 1, "z": 2}[view.up.lstrip("-")]
    return height_colors(panel.points, axis=axis)


def _run_worker(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout,
                          env=_worker_env())


def _write_worker_input(path: str, clouds: list[np.ndarray], colors: list[np.ndarray], width: int, height: int,
                        point_size: float, background: tuple[float, float, float], titles: list[str]) -> None:
    arrays: dict[str, np.ndarray] = {
        "num_panels": np.array(len(clouds)), "width": np.array(width), "height": np.array(height),
        "point_size": np.array(point_size), "background": np.asarray(background, dtype=np.float64),
        "titles": np.array(titles, dtype=str),
    }
    for k, (p, c) in enumerate(zip(clouds, colors)):
        arrays[f"points_{k}"] = np.asarray(p, dtype=np.float64)
        arrays[f"colors_{k}"] = np.asarray(c, dtype=np.float64)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _render_open3d(clouds: list[np.ndarray], colors: list[np.ndarray], width: int, height: int,
                   point_size: float, background: tuple[float, float, float]) -> list[np.ndarray] | None:
    """Images from the worker, or None (after logging why) when it failed."""
    with tempfile.TemporaryDirectory(prefix="pointpeft_viz_") as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        _write_worker_input(src, clouds, colors, width, height, point_size, background, [""] * len(clouds))
        try:
            res = _run_worker(["render", src, dst], RENDER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _mark_open3d_broken(f"no image after {RENDER_TIMEOUT_S:.0f} s")
            return None
        if res.returncode != 0 or not os.path.exists(dst):
            tail = (res.stdout + res.stderr).strip().splitlines()[-1:] or [""]
            _mark_open3d_broken(f"worker exit code {res.returncode}: {tail[0][:200]}")
            return None
        with np.load(dst) as data:
            images = [data[f"image_{k}"] for k in range(len(clouds))]
    blank = [k for k, im in enumerate(images) if float(im.std()) == 0.0]
    if blank:
        _mark_open3d_broken(f"blank image for panel(s) {blank}")
        return None
    return images


def _scale_groups(same_scale: bool | Sequence[int], n: int) -> list[int] | None:
    if same_scale is True:
        return [0] * n
    if same_scale is False or same_scale is None:
        return None
    groups = [int(g) for g in same_scale]
    if len(groups) != n:
        raise InputError(f"same_scale: {len(groups)} group ids for {n} panels")
    return groups


def render_images(panels: list[Panel], width: int = 320, height: int = 320, view: View | None = None,
                  point_size: float | None = None, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                  backend: str = "auto", same_scale: bool | Sequence[int] = False) -> list[np.ndarray]:
    """One (height, width, 3) uint8 image per panel, all from the same camera ``view``.

    ``same_scale=True`` frames every panel with one box around all their clouds, so sizes and positions compare
    (e.g. a masked input and its reconstruction); a list of group ids (one per panel) shares a frame within each
    group only; by default each cloud fills its own panel."""
    view = view or View()
    point_size = point_size or default_point_size(width)
    colors = [_colors_of(p, view) for p in panels]
    groups = _scale_groups(same_scale, len(panels))
    boxes: list[tuple[np.ndarray, float] | None] = [None] * len(panels)
    if groups is not None:
        for g in set(groups):
            members = [k for k, gk in enumerate(groups) if gk == g]
            box = common_box([panels[k].points for k in members], view.up)
            for k in members:
                boxes[k] = box
    if resolve_backend(backend) == "open3d":
        clouds = [camera_frame(p.points, view, b[0] if b is not None else None) for p, b in zip(panels, boxes)]
        o3d_colors = list(colors)
        if groups is not None:  # Open3D frames a cloud by its bounding box: give the clouds of a group the same
            # one with two background-coloured points at its corners (they land in the image corners)
            for g in set(groups):
                members = [k for k, gk in enumerate(groups) if gk == g]
                lo = np.min([clouds[k].min(axis=0) for k in members], axis=0)
                hi = np.max([clouds[k].max(axis=0) for k in members], axis=0)
                for k in members:
                    clouds[k] = np.concatenate([clouds[k], lo[None], hi[None]])
                    o3d_colors[k] = np.concatenate([colors[k], np.tile(background, (2, 1))])
        images = _render_open3d(clouds, o3d_colors, width, height, point_size, background)
        if images is not None:
            return images
    return [render_matplotlib(p.points, c, width, height, view, point_size, background, b)
            for p, c, b in zip(panels, colors, boxes)]


# -- composition -----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _font(size: int):  # noqa: ANN202 - a PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


@dataclass(frozen=True)
class Layout:
    """Pixel layout of a composed figure; ``size`` is (width, height) of the PNG."""

    ncols: int
    nrows: int
    panel: tuple[int, int]
    title_h: int
    suptitle_h: int
    legend_h: int
    legend_rows: int

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.panel
        return self.ncols * w, self.suptitle_h + self.nrows * (self.title_h + h) + self.legend_h


def _legend_item_width(label: str, font_px: int) -> int:
    """Swatch + gap + measured text + spacing, in pixels."""
    return int(font_px * 1.0) + 6 + int(math.ceil(_font(font_px).getlength(label))) + 18


def compute_layout(num_panels: int, panel_size: tuple[int, int] = (320, 320), ncols: int | None = None,
                   titles: bool = True, legend: list[tuple[str, tuple[float, float, float]]] | None = None,
                   suptitle: str | None = None) -> Layout:
    """Grid, title bands and legend rows for ``num_panels`` panels (at most 5 columns unless ``ncols`` says)."""
    if num_panels < 1:
        raise InputError("nothing to draw: no panels")
    w, h = panel_size
    ncols = max(1, min(ncols or min(num_panels, 5), num_panels))
    nrows = math.ceil(num_panels / ncols)
    font_px = max(12, w // 20)
    title_h = int(font_px * 1.8) if titles else 0
    suptitle_h = int(font_px * 2.2) if suptitle else 0
    legend_rows = 0
    if legend:
        avail, x = ncols * w - 16, 0
        legend_rows = 1
        for label, _ in legend:
            iw = _legend_item_width(label, font_px)
            if x and x + iw > avail:
                legend_rows, x = legend_rows + 1, 0
            x += iw
    legend_h = legend_rows * int(font_px * 1.7) + (int(font_px * 0.6) if legend_rows else 0)
    return Layout(ncols, nrows, (w, h), title_h, suptitle_h, legend_h, legend_rows)


def compose(images: list[np.ndarray], titles: list[str] | None = None,
            title_colors: list[tuple[float, float, float]] | None = None, ncols: int | None = None,
            legend: list[tuple[str, tuple[float, float, float]]] | None = None, suptitle: str | None = None,
            background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Tile same-sized panel images into one (H, W, 3) uint8 image with titles, a suptitle and a legend."""
    from PIL import Image, ImageDraw

    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise InputError("compose: every panel image must have the same size")
    titles = titles or [""] * len(images)
    lay = compute_layout(len(images), (w, h), ncols, any(titles), legend, suptitle)
    bg = tuple(int(round(c * 255)) for c in background)
    canvas = Image.new("RGB", lay.size, bg)
    draw = ImageDraw.Draw(canvas)
    font_px = max(12, w // 20)
    font, big = _font(font_px), _font(int(font_px * 1.25))
    if suptitle:
        draw.text((lay.size[0] / 2, lay.suptitle_h / 2), suptitle, fill=(0, 0, 0), font=big, anchor="mm")
    for k, im in enumerate(images):
        r, c = divmod(k, lay.ncols)
        x0, y0 = c * w, lay.suptitle_h + r * (lay.title_h + h)
        canvas.paste(Image.fromarray(np.ascontiguousarray(im)), (x0, y0 + lay.title_h))
        if titles[k] and lay.title_h:
            col = (title_colors[k] if title_colors else (0.1, 0.1, 0.1))
            fill = tuple(int(round(v * 255)) for v in col)
            draw.text((x0 + w / 2, y0 + lay.title_h / 2), _fit_text(titles[k], w - 8, font), fill=fill,
                      font=font, anchor="mm")
    if legend:
        y = lay.size[1] - lay.legend_h + int(font_px * 0.3)
        x, row_h, avail = 8, int(font_px * 1.7), lay.size[0] - 16
        for label, color in legend:
            iw = _legend_item_width(label, font_px)
            if x > 8 and x - 8 + iw > avail:
                x, y = 8, y + row_h
            sw = int(font_px * 1.0)
            top = y + (row_h - sw) // 2
            draw.rectangle((x, top, x + sw, top + sw), fill=tuple(int(round(v * 255)) for v in color),
                           outline=(60, 60, 60))
            draw.text((x + sw + 6, y + row_h / 2), label, fill=(20, 20, 20), font=font, anchor="lm")
            x += iw
    return np.asarray(canvas)


def _fit_text(text: str, width: int, font) -> str:  # noqa: ANN001 - a PIL font
    """``text``, shortened with an ellipsis until it fits in ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", optimize=True))


def render_panels(panels: list[Panel], out: str | os.PathLike | None = None, *, ncols: int | None = None,
                  panel_size: tuple[int, int] = (320, 320), view: View | None = None,
                  point_size: float | None = None, legend: list[tuple[str, tuple[float, float, float]]] | None = None,
                  suptitle: str | None = None, backend: str = "auto",
                  same_scale: bool | Sequence[int] = False) -> np.ndarray:
    """Render every panel from the same view, tile them with titles (+ legend), save to ``out`` (PNG) if given.
    ``same_scale``: one frame for all panels (see :func:`render_images`)."""
    if not panels:
        raise InputError("nothing to draw: no panels")
    w, h = (int(v) for v in panel_size)
    if w < 16 or h < 16:
        raise InputError(f"panel_size must be at least 16x16 pixels, got {panel_size}")
    images = render_images(panels, w, h, view, point_size, backend=backend, same_scale=same_scale)
    img = compose(images, [p.title for p in panels], [p.title_color for p in panels], ncols, legend, suptitle)
    if out is not None:
        save_png(img, out)
        logger.info("wrote %s (%dx%d)", out, img.shape[1], img.shape[0])
    return img


# -- interactive -----------------------------------------------------------------------------------------------

def has_display() -> bool:
    """True when a window can be opened (X11 or Wayland display set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_panels(panels: list[Panel], view: View | None = None, point_size: float | None = None,
                size: tuple[int, int] = (1280, 720), backend: str = "auto") -> None:
    """Open an interactive window with the clouds side by side (Open3D, else a matplotlib window)."""
    if not has_display():
        raise InputError("no display to open a window on (DISPLAY is not set); pass an output file (--out x.png)")
    view = view or View()
    colors = [_colors_of(p, view) for p in panels]
    clouds = [camera_frame(p.points, view) for p in panels]
    want = backend if backend != "auto" else os.environ.get("POINTPEFT_VIZ_BACKEND", "auto")
    if want != "matplotlib" and importlib.util.find_spec("open3d") is not None:
        with tempfile.TemporaryDirectory(prefix="pointpeft_viz_") as tmp:
            src = os.path.join(tmp, "in.npz")
            _write_worker_input(src, clouds, colors, size[0], size[1], point_size or 3.0, (1.0, 1.0, 1.0),
                                [p.title for p in panels])
            res = subprocess.run([sys.executable, str(WORKER), "show", src], capture_output=True, text=True,
                                 env=_worker_env())
        if res.returncode == 0:
            return
        if res.returncode == EXIT_NO_DISPLAY:
            raise InputError(f"cannot open the display {os.environ.get('DISPLAY')!r}; pass an output file "
                             "(--out x.png) to render headless")
        logger.warning("Open3D window failed (exit code %d); using a matplotlib window", res.returncode)
    _show_matplotlib(panels, colors, view, point_size or 3.0)


def _show_matplotlib(panels: list[Panel], colors: list[np.ndarray], view: View, point_size: float) -> None:
    import matplotlib.pyplot as plt

    from pointpeft.viz.camera import to_z_up

    n = len(panels)
    ncols = min(n, 4)
    fig = plt.figure(figsize=(4 * ncols, 4 * math.ceil(n / ncols)))
    for k, (p, c) in enumerate(zip(panels, colors)):
        ax = fig.add_subplot(math.ceil(n / ncols), ncols, k + 1, projection="3d")
        q = to_z_up(p.points, view.up)
        ax.scatter(q[:, 0], q[:, 1], q[:, 2], c=c, s=point_size**2, depthshade=False)
        ax.view_init(elev=view.elev, azim=view.azim)
        ax.set_box_aspect(tuple(np.ptp(q, axis=0) + 1e-6))
        ax.set_title(p.title)
        ax.set_axis_off()
    plt.show()
