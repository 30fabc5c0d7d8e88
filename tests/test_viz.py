"""Rendering (Open3D worker, matplotlib fallback, crash handling), patch/routing/recon/prediction views, and every
mode of tools/visualize.py rendered headless to PNG."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.scripts import load_script

from pointpeft.errors import InputError
from pointpeft.viz import render
from pointpeft.viz.colors import UNASSIGNED, categorical_colors
from pointpeft.viz.render import Panel, compute_layout, render_panels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _matplotlib_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Open3D costs a child process per figure: every test but the Open3D one draws with matplotlib."""
    monkeypatch.setenv("POINTPEFT_VIZ_BACKEND", "matplotlib")


def _tool():  # noqa: ANN202 - the tools/visualize.py module
    return load_script("tools/visualize.py")


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def assert_not_blank(img: np.ndarray, min_colors: int = 3, min_std: float = 8.0) -> None:
    """Real content: pixel spread and several distinct non-background colours."""
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert float(img.std()) > min_std, f"image looks blank (std {img.std():.2f})"
    colors = np.unique(img.reshape(-1, 3) // 16, axis=0)  # coarse bins: anti-aliasing does not count
    assert len(colors) >= min_colors, f"only {len(colors)} distinct colours"


def _ball(n: int = 600, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)


def _colour_present(img: np.ndarray, rgb: np.ndarray, tol: int = 6) -> bool:
    target = np.round(np.asarray(rgb) * 255).astype(int)
    return bool((np.abs(img.astype(int) - target).max(axis=-1) <= tol).any())


# -- rendering -------------------------------------------------------------------------------------------------

def test_matplotlib_panels_have_layout_size_and_the_panel_colours(tmp_path: Path) -> None:
    pts = _ball()
    cols = categorical_colors(4)[np.arange(len(pts)) % 4]
    panels = [Panel(pts, cols, "four colours"), Panel(pts * [1, 1, 0.3], None, "height shaded"),
              Panel(pts[:100], np.tile([0.8, 0.1, 0.1], (100, 1)), "red")]
    legend = [("a", (1.0, 0.0, 0.0)), ("b", (0.0, 0.6, 0.0))]
    img = render_panels(panels, tmp_path / "p.png", ncols=2, panel_size=(160, 120), legend=legend,
                        suptitle="title")
    lay = compute_layout(3, (160, 120), 2, True, legend, "title")
    assert (img.shape[1], img.shape[0]) == lay.size and lay.nrows == 2
    disk = _png(tmp_path / "p.png")
    np.testing.assert_array_equal(disk, img)
    assert_not_blank(img, min_colors=6)
    top_left = img[lay.suptitle_h + lay.title_h : lay.suptitle_h + lay.title_h + 120, :160]
    for c in categorical_colors(4):  # flat colours: each point colour is drawn exactly
        assert _colour_present(top_left, c)
    assert not list(tmp_path.glob(".*.tmp"))


def test_panel_and_layout_errors() -> None:
    with pytest.raises(InputError, match="non-empty"):
        Panel(np.zeros((0, 3)))
    with pytest.raises(InputError, match="colors"):
        Panel(np.zeros((4, 3)), np.zeros((3, 3)), "x")
    with pytest.raises(InputError, match="NaN"):
        Panel(np.full((4, 3), np.nan))
    with pytest.raises(InputError, match="no panels"):
        render_panels([])
    with pytest.raises(InputError, match="backend"):
        render.resolve_backend("vtk")


def test_open3d_renders_offscreen_in_a_worker(tmp_path: Path) -> None:
    """The one Open3D test: the probe runs in a child process and, where it works, the worker's image has the
    requested size and the points' colours. Where it does not, the fallback must take over."""
    works, reason = render.open3d_status()
    if not works:
        assert render.resolve_backend("open3d") == "matplotlib"
        pytest.skip(f"Open3D cannot render here ({reason}); the fallback was used")
    pts = _ball(800)
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.2, 0.9])
    cols = np.where((pts[:, 0] > 0)[:, None], red, blue)
    imgs = render.render_images([Panel(pts, cols), Panel(pts * 0.5, cols)], 200, 150, backend="open3d",
                                same_scale=True)
    assert [im.shape for im in imgs] == [(150, 200, 3)] * 2
    for im in imgs:
        assert_not_blank(im, min_colors=3)
        assert _colour_present(im, red, tol=3) and _colour_present(im, blue, tol=3)
    # same_scale: the half-size cloud spans half the pixels of the full one (a shared frame)
    spans = []
    for im in imgs:
        cols = np.nonzero((im.astype(int).sum(-1) < 700).any(axis=0))[0]
        spans.append(cols.max() - cols.min())
    assert 0.4 < spans[1] / spans[0] < 0.6, spans


def _crashing_worker(tmp_path: Path) -> Path:
    w = tmp_path / "crash_worker.py"
    w.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    return w


def test_open3d_crash_falls_back_to_matplotlib_and_says_so_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(render, "WORKER", _crashing_worker(tmp_path))
    monkeypatch.setattr(render, "_open3d_state", None)
    monkeypatch.setattr(render, "_told_fallback", False)
    monkeypatch.setattr(render.importlib.util, "find_spec", lambda name: object())  # "open3d is installed"
    monkeypatch.delenv("POINTPEFT_VIZ_BACKEND")
    caplog.set_level(logging.WARNING, logger="pointpeft.viz")
    works, reason = render.open3d_status()
    assert not works and "exit code" in reason
    img = render_panels([Panel(_ball())], tmp_path / "a.png", panel_size=(96, 96))
    render_panels([Panel(_ball())], tmp_path / "b.png", panel_size=(96, 96))
    assert_not_blank(img)
    warnings = [r for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_worker_crash_during_render_is_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "WORKER", _crashing_worker(tmp_path))
    monkeypatch.setattr(render, "_open3d_state", (True, "pretend the probe passed"))
    monkeypatch.setattr(render, "_told_fallback", False)
    imgs = render.render_images([Panel(_ball())], 80, 64, backend="open3d")
    assert imgs[0].shape == (64, 80, 3)
    assert_not_blank(imgs[0])
    assert render.open3d_status() == (False, render._open3d_state[1]) and not render._open3d_state[0]


# -- views -----------------------------------------------------------------------------------------------------

def test_patches_follow_the_tokenizer() -> None:
    from pointpeft.models.tokenizer import Group
    from pointpeft.viz.views import compute_patches, group_panels

    pts = torch.from_numpy(_ball(400))
    group = Group(12, 40)
    patches = compute_patches(pts, group)
    _, center = group(pts[None])
    np.testing.assert_array_equal(patches.centers, center[0].numpy())
    assert patches.members.shape == (12, 40)
    for k in range(len(pts)):
        holding = np.nonzero((patches.members == k).any(axis=1))[0]
        if len(holding) == 0:
            assert patches.point_group[k] == -1
        else:  # of the patches holding the point, the one with the nearest centre
            d = np.linalg.norm(patches.centers[holding] - patches.points[k], axis=1)
            assert patches.point_group[k] == holding[np.argmin(d)]
    centres_panel, patch_panel = group_panels(patches, "ball")
    assert len(centres_panel.points) > len(pts)  # centre markers added
    assert len(np.unique(patch_panel.colors[patches.point_group >= 0], axis=0)) == 12


def test_patch_experts_majority_and_head() -> None:
    from pointpeft.viz.views import patch_experts, routing_point_colors

    choices = torch.tensor([[9, 9, 9],  # CLS: ignored
                            [1, 1, 2], [3, 0, 0], [2, 1, 0], [4, 4, 4],
                            [5, 5, 5]])  # a prompt token after the patches: ignored
    np.testing.assert_array_equal(patch_experts(choices, 4, 6), [1, 0, 0, 4])  # tie 2/1/0 -> lowest
    np.testing.assert_array_equal(patch_experts(choices, 4, 6, head=0), [1, 3, 2, 4])
    with pytest.raises(InputError, match="head 3"):
        patch_experts(choices, 4, 6, head=3)
    with pytest.raises(InputError, match="1 \\(CLS\\) \\+ 9"):
        patch_experts(choices, 9, 6)
    cols, experts = routing_point_colors(choices, np.array([0, 3, -1, 1]), 4, 6)
    pal = categorical_colors(6)
    np.testing.assert_array_equal(cols, np.stack([pal[1], pal[4], UNASSIGNED, pal[0]]))


def _adapterx_tiny(num_classes: int = 5) -> torch.nn.Module:
    from pointpeft.models import build_point_transformer
    from pointpeft.peft import get_peft_model

    torch.manual_seed(0)
    return get_peft_model(build_point_transformer("point_mae_tiny", num_classes=num_classes), {"type": "adapterx"})


def test_routing_colours_are_the_routers_choices() -> None:
    from pointpeft.peft.adapterx import routing_choices
    from pointpeft.viz.views import capture_routing, expert_palette, routing_panels

    model = _adapterx_tiny()
    pts = torch.from_numpy(_ball(300, seed=3))
    routing = capture_routing(model, pts)
    raw = routing_choices(model)  # the router's own record of this forward
    G = model.group_divider.num_group
    _, center = model.group_divider(pts[None])
    np.testing.assert_array_equal(routing.patches.centers, center[0].numpy())  # token 1 + k <-> centre k
    assert raw[1].shape[1] > 1 + G  # a later block sees prompt tokens after the patches
    pal = expert_palette(routing.num_experts)
    pg = routing.patches.point_group
    in_patch = pg >= 0
    assert in_patch.sum() > 50
    heads = raw[0].shape[-1]
    assert heads == 2
    for head in (0, 1, None):
        panels, legend = routing_panels(routing, head=head)
        assert len(panels) == len(raw)
        for b, panel in zip(sorted(raw), panels):
            c = raw[b][0, 1 : 1 + G]  # (G, heads)
            per_patch = c[:, head] if head is not None else c.min(dim=1).values  # 2 heads: tie -> lower index
            expected = pal[per_patch.numpy()][pg[in_patch]]
            np.testing.assert_array_equal(panel.colors[in_patch], expected)
            np.testing.assert_array_equal(panel.colors[~in_patch], np.tile(UNASSIGNED, ((~in_patch).sum(), 1)))
        names = [n for n, _ in legend]
        assert names[-1] == "in no patch" and all(n.startswith("expert ") for n in names[:-1])
    with pytest.raises(InputError, match="block 7"):
        routing_panels(routing, blocks=[7])


def test_routing_needs_an_smoa_model() -> None:
    from pointpeft.models import build_point_transformer
    from pointpeft.viz.views import capture_routing

    with pytest.raises(ValueError, match="no SMoA"):
        capture_routing(build_point_transformer("point_mae_tiny", num_classes=3), _ball(100))


def test_recon_and_prediction_panels() -> None:
    from pointpeft.models import build_point_mae_pretrain
    from pointpeft.viz.views import RECON_COLOR, RIGHT_COLOR, WRONG_COLOR, prediction_panels, recon_panels

    torch.manual_seed(0)
    mae = build_point_mae_pretrain("point_mae_tiny")
    panels, legend = recon_panels(mae, _ball(256))
    assert [len(p.points) for p in panels] == [256, panels[1].points.shape[0], 16 * 8]
    n_vis = len(panels[1].points)
    assert 0 < n_vis < 128 and n_vis % 8 == 0
    np.testing.assert_array_equal(panels[2].points[:n_vis], panels[1].points)  # visible part kept as is
    assert (panels[2].colors[n_vis:] == RECON_COLOR).all()
    assert mae.training  # mode restored
    clouds = np.stack([_ball(64, s) for s in range(3)])
    pp = prediction_panels(clouds, np.array([0, 1, 2]), np.array([0, 2, 2]), ["a", "b", "c"])
    assert [p.title for p in pp] == ["a / a", "b / c", "c / c"]
    assert [p.title_color for p in pp] == [RIGHT_COLOR, WRONG_COLOR, RIGHT_COLOR]


# -- tools/visualize.py ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tool():  # noqa: ANN201
    return _tool()


def _run(tool, argv: list[str], out: Path, size: tuple[int, int] | None = None) -> np.ndarray:  # noqa: ANN001
    assert tool.main([*argv, "--out", str(out), "--size", "120", "120"]) == 0
    img = _png(out)
    if size is not None:
        assert (img.shape[1], img.shape[0]) == size
    assert_not_blank(img)
    return img


def test_tool_cloud_from_files_and_data_set(tool, tmp_path: Path) -> None:  # noqa: ANN001
    np.save(tmp_path / "ball.npy", _ball(500))
    (tmp_path / "tet.off").write_text("OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n")
    lay = compute_layout(2, (120, 120), None, True)
    _run(tool, ["cloud", "--file", str(tmp_path / "ball.npy"), str(tmp_path / "tet.off"), "--npoints", "400",
                "--save-ply", str(tmp_path / "first.ply")], tmp_path / "c.png", lay.size)
    from pointpeft.data.point_files import read_ply

    assert read_ply(tmp_path / "first.ply").points.shape == (400, 3)
    lay3 = compute_layout(3, (120, 120), None, True)
    _run(tool, ["cloud", "--dataset", "synthetic_shapes", "--dataset-arg", "num_samples=12", "--npoints", "256",
                "--index", "0", "1", "2"], tmp_path / "d.png", lay3.size)


def test_tool_groups_and_errors(tool, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    np.save(tmp_path / "ball.npy", _ball(500))
    img = _run(tool, ["groups", "--model", "point_mae_tiny", "--file", str(tmp_path / "ball.npy"),
                      "--npoints", "256"], tmp_path / "g.png", compute_layout(2, (120, 120), None, True).size)
    assert_not_blank(img, min_colors=10)  # 16 patch colours + centre markers
    assert tool.main(["cloud", "--file", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.npy" in capsys.readouterr().err


def _tiny_config(tmp_path: Path, peft: bool = True) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {type: point_mae_tiny, num_classes: 12}\n" + ("peft: {type: adapterx}\n" if peft else "")
                   + "data:\n  test: {type: synthetic_shapes, num_samples: 24, npoints: 256}\n")
    return cfg


def test_tool_routing_from_a_saved_adapter(tool, tmp_path: Path) -> None:  # noqa: ANN001
    from pointpeft.peft import save_adapter

    model = _adapterx_tiny(num_classes=12)
    with torch.no_grad():  # make the adapter differ from a fresh injection so loading it matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_adapter(model, tmp_path / "adapter")
    cfg = _tiny_config(tmp_path, peft=False)
    img = _run(tool, ["routing", "--config", str(cfg), "--adapter", str(tmp_path / "adapter"), "--index", "5",
                      "--block", "1", "--save-ply", str(tmp_path / "r.ply")], tmp_path / "r.png")
    assert img.shape[1] == 120
    # the PLY holds exactly the colours computed from the loaded adapter's routing
    from pointpeft.data import build_dataset
    from pointpeft.data.point_files import read_ply
    from pointpeft.peft import load_adapter
    from pointpeft.viz.views import capture_routing, routing_panels

    torch.manual_seed(0)  # the tool seeds with --seed 0 before building: the same frozen random backbone
    fresh = load_adapter(tool.build_model_from_args(
        tool.build_parser().parse_args(["routing", "--model", "point_mae_tiny", "--num-classes", "12"]), None),
        tmp_path / "adapter")
    pts = build_dataset({"type": "synthetic_shapes", "split": "test", "num_samples": 24, "npoints": 256})[5][0]
    panels, _ = routing_panels(capture_routing(fresh, pts), blocks=[1])
    ply = read_ply(tmp_path / "r.ply")
    np.testing.assert_allclose(ply.colors, np.round(panels[0].colors * 255) / 255, atol=1e-9)


def test_tool_recon_from_a_pretrain_checkpoint(tool, tmp_path: Path) -> None:  # noqa: ANN001
    from pointpeft.models import build_point_mae_pretrain, export_pretrain_checkpoint

    torch.manual_seed(1)
    ckpt = export_pretrain_checkpoint(build_point_mae_pretrain("point_mae_tiny"), tmp_path / "pre.pth")
    cfg = tmp_path / "mae.yaml"
    cfg.write_text("model: {type: point_mae_pretrain, arch: point_mae_tiny}\n")
    lay = compute_layout(6, (120, 120), 3, True, [("visible", (0, 0, 0)), ("reconstructed", (0, 0, 0))])
    _run(tool, ["recon", "--config", str(cfg), "--ckpt", str(ckpt), "--dataset", "synthetic_shapes",
                "--dataset-arg", "num_samples=12", "--npoints", "256", "--index", "0", "4"], tmp_path / "m.png",
         lay.size)


def test_tool_predictions_grid(tool, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = _tiny_config(tmp_path)
    lay = compute_layout(6, (120, 120), 3, True, [("right", (0, 0, 0)), ("wrong", (0, 0, 0))],
                         "sample: true / predicted class")
    _run(tool, ["predictions", "--config", str(cfg), "--num", "6", "--ncols", "3"], tmp_path / "p.png", lay.size)


def test_tool_without_display_or_out_asks_for_out(tool, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                 capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    np.save(tmp_path / "b.npy", _ball(50))
    assert tool.main(["cloud", "--file", str(tmp_path / "b.npy")]) == 2
    assert "--out" in capsys.readouterr().err


def test_tool_is_runnable_as_a_script(tmp_path: Path) -> None:
    import subprocess

    np.save(tmp_path / "b.npy", _ball(200))
    res = subprocess.run([sys.executable, str(REPO / "tools" / "visualize.py"), "cloud", "--file",
                          str(tmp_path / "b.npy"), "--out", str(tmp_path / "s.png"), "--size", "64", "64",
                          "--backend", "matplotlib"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert_not_blank(_png(tmp_path / "s.png"))


def test_make_docs_images_writes_three_figures(tmp_path: Path) -> None:
    mod = load_script("scripts/make_docs_images.py")
    # no ModelNet40 at this root: the synthetic shapes stand in
    assert mod.main(["--root", str(tmp_path / "none"), "--out", str(tmp_path), "--size", "96",
                     "--backend", "matplotlib"]) == 0
    for name in ("clouds", "groups", "routing"):
        assert_not_blank(_png(tmp_path / f"{name}.png"))


def test_window_opens_on_a_display(tmp_path: Path) -> None:
    """With a display (a virtual one here), the worker opens a window and keeps it open until it is closed."""
    import shutil
    import subprocess
    import time

    works, reason = render.open3d_status()
    if shutil.which("Xvfb") is None or not works:
        pytest.skip("needs Xvfb and a working Open3D" + ("" if works else f" ({reason})"))
    display = next(f":{n}" for n in range(91, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        time.sleep(1.0)
        src = tmp_path / "in.npz"
        render._write_worker_input(str(src), [_ball(300)], [np.tile([0.2, 0.3, 0.9], (300, 1))], 400, 300, 3.0,
                                   (1.0, 1.0, 1.0), ["ball"])
        env = {**render._worker_env(), "DISPLAY": display}
        worker = subprocess.Popen([sys.executable, str(render.WORKER), "show", str(src)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(6.0)
        assert worker.poll() is None, f"window closed early: {worker.communicate()}"
    finally:
        for proc in (worker, xvfb):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_unreachable_display_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes.util

    if ctypes.util.find_library("X11") is None or importlib.util.find_spec("open3d") is None:
        pytest.skip("needs libX11 and open3d to check the display")
    monkeypatch.setenv("DISPLAY", ":" + str(next(n for n in range(977, 1100)
                                                 if not Path(f"/tmp/.X11-unix/X{n}").exists())))
    monkeypatch.delenv("POINTPEFT_VIZ_BACKEND")
    with pytest.raises(InputError, match="cannot open the display"):
        render.show_panels([Panel(_ball(50))])
    from pointpeft.viz import _o3d_worker

    assert _o3d_worker.EXIT_NO_DISPLAY == render.EXIT_NO_DISPLAY
