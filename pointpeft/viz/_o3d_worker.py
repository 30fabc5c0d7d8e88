"""Open3D worker, run as a separate process by :mod:`pointpeft.viz.render` (never imported by the library).

Open3D's OpenGL paths can abort or segfault (no display, broken drivers), so rendering runs here, in a child
process, and a crash costs the caller a fallback instead of its life. This file imports only numpy and open3d, so
it starts without torch or pointpeft.

Usage: ``python _o3d_worker.py render IN.npz OUT.npz`` | ``show IN.npz`` | ``probe``. IN.npz holds ``width``,
``height``, ``point_size``, ``background`` and, per panel k, ``points_k`` (N, 3) already rotated into the camera
frame (looking down -z, y up) and ``colors_k`` (N, 3) in [0, 1]; OUT.npz gets ``image_k`` (H, W, 3) uint8.

Facts checked with Open3D 0.20 on Mesa EGL (no display): the legacy ``Visualizer`` with ``visible=False`` renders
offscreen; ``OffscreenRenderer`` needs Vulkan and fails; any ViewControl call in a window created after another one
was destroyed renders a blank image. So each process opens ONE window and reuses it for every panel, and the
caller rotates the points into the camera frame; the camera only gets a narrow field of view and a zoom.
"""

from __future__ import annotations

import sys

import numpy as np

EXIT_NO_DISPLAY = 4
ZOOM = 0.62  # of the bounding box fit Open3D computes; 1.0 leaves wide margins at the narrow field of view


def _open3d():  # noqa: ANN202 - the module
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


def _cloud(o3d, points: np.ndarray, colors: np.ndarray):  # noqa: ANN001, ANN202
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    pc.colors = o3d.utility.Vector3dVector(np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0))
    return pc


def render(points: list[np.ndarray], colors: list[np.ndarray], width: int, height: int, point_size: float,
           background: np.ndarray, zoom: float = ZOOM) -> list[np.ndarray]:
    """One offscreen image (H, W, 3) uint8 per cloud, all drawn in ONE hidden window (see the module notes)."""
    o3d = _open3d()
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(visible=False, width=int(width), height=int(height)):
        raise RuntimeError("Open3D could not create an offscreen window")
    images = []
    try:
        opt = vis.get_render_option()
        opt.point_size = float(point_size)
        opt.background_color = np.asarray(background, dtype=np.float64)
        opt.light_on = False
        for pts, cols in zip(points, colors):
            vis.clear_geometries()
            vis.add_geometry(_cloud(o3d, pts, cols), reset_bounding_box=True)
            vc = vis.get_view_control()
            vc.set_front([0.0, 0.0, 1.0])
            vc.set_up([0.0, 1.0, 0.0])
            vc.set_lookat([0.0, 0.0, 0.0])
            vc.change_field_of_view(step=-20.0)  # down to Open3D's minimum (5 degrees): nearly orthographic
            vc.set_zoom(zoom)
            buf = np.asarray(vis.capture_screen_float_buffer(do_render=True))
            if buf.shape[:2] != (int(height), int(width)):
                raise RuntimeError(f"Open3D returned an image of shape {buf.shape}, expected ({height}, {width}, 3)")
            images.append(np.clip(buf * 255.0 + 0.5, 0, 255).astype(np.uint8))
    finally:
        vis.destroy_window()
    return images


def x_display_reachable() -> bool | None:
    """Can an X connection to $DISPLAY be opened? None when that cannot be checked (no DISPLAY or no libX11).

    Needed because with an unreachable display Open3D silently falls back to an offscreen context and its
    event loop then never ends: a window nobody can see or close."""
    import ctypes
    import ctypes.util
    import os

    if not os.environ.get("DISPLAY"):
        return None
    lib = ctypes.util.find_library("X11")
    if lib is None:
        return None
    x11 = ctypes.cdll.LoadLibrary(lib)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    handle = x11.XOpenDisplay(None)
    if not handle:
        return False
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay(handle)
    return True


def show(points: list[np.ndarray], colors: list[np.ndarray], titles: list[str], width: int, height: int,
         point_size: float, background: np.ndarray) -> None:
    """One interactive window with the clouds side by side (left to right)."""
    o3d = _open3d()
    geoms, offset = [], 0.0
    for pts, cols in zip(points, colors):
        pts = np.asarray(pts, dtype=np.float64)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        shift = np.array([offset - lo[0], 0.0, 0.0])
        geoms.append(_cloud(o3d, pts + shift, cols))
        offset += (hi[0] - lo[0]) * 1.15 + 1e-6
    vis = o3d.visualization.Visualizer()
    vis.create_window(window_name=" | ".join(titles) or "pointpeft", width=int(width), height=int(height))
    opt = vis.get_render_option()
    opt.point_size = float(point_size)
    opt.background_color = np.asarray(background, dtype=np.float64)
    opt.light_on = False
    for g in geoms:
        vis.add_geometry(g)
    vis.run()
    vis.destroy_window()


def _read(path: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str], dict]:
    data = np.load(path, allow_pickle=False)
    n = int(data["num_panels"])
    pts = [data[f"points_{k}"] for k in range(n)]
    cols = [data[f"colors_{k}"] for k in range(n)]
    titles = [str(t) for t in data["titles"]] if "titles" in data else [""] * n
    opts = {"width": int(data["width"]), "height": int(data["height"]), "point_size": float(data["point_size"]),
            "background": data["background"]}
    return pts, cols, titles, opts


def probe() -> int:
    """Render a small coloured cloud; exit 0 and print OK only if the image has visible content."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (500, 3))
    cols = (pts + 1) / 2
    (img,) = render([pts], [cols], 96, 80, 3.0, np.ones(3))
    if img.shape != (80, 96, 3) or float(img.std()) < 5.0:
        print(f"blank probe image (shape {img.shape}, std {img.std():.2f})")
        return 3
    print("OK")
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd = argv[0]
    if cmd == "probe":
        return probe()
    if cmd == "render" and len(argv) == 3:
        pts, cols, _, opts = _read(argv[1])
        images = render(pts, cols, **opts)
        with open(argv[2], "wb") as fh:
            np.savez(fh, **{f"image_{k}": im for k, im in enumerate(images)})
        return 0
    if cmd == "show" and len(argv) == 2:
        if x_display_reachable() is False:
            print("cannot open the X display named by DISPLAY")
            return EXIT_NO_DISPLAY
        pts, cols, titles, opts = _read(argv[1])
        show(pts, cols, titles, **opts)
        return 0
    print(f"bad arguments: {argv}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
