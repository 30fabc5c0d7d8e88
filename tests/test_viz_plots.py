"""Run charts of pointpeft.viz.plots and ``tools/visualize.py plot``: curves (JSON history and TensorBoard),
accuracy vs trainable parameters, expert usage, few-shot table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.scripts import load_script

from pointpeft.errors import DataError, InputError
from pointpeft.viz import plots

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        img = np.asarray(im.convert("RGB"))
    assert img.std() > 5 and len(np.unique(img.reshape(-1, 3) // 16, axis=0)) >= 3
    return img


def _write_run(folder: Path, name: str, trainable: int, acc: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    hist = [{"epoch": e, "train_loss": float(2 * np.exp(-e / 4) + 0.1), "val_acc": float(50 + 4 * e),
             "lr": 5e-4, "time": 1.0} for e in range(8)]
    data = {"name": name, "params": {"trainable": trainable, "total": 22_099_752},
            "metrics": {"test_acc": acc}, "history": hist,
            "expert_usage": rng.dirichlet(np.ones(4), 3).tolist(),
            "fewshot": {"5way10shot": {"mean": 96.3, "std": 2.5}, "10way20shot": [94.0, 95.0, 96.0]}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(data))
    return folder / "results.json"


def test_history_from_json_both_shapes() -> None:
    rows = {"history": [{"epoch": 1, "loss": 2.0, "val": {"acc": 50}}, {"epoch": 2, "loss": 1.0, "val": {"acc": 60}}]}
    h = plots.history_from_json(rows)
    np.testing.assert_array_equal(h["loss"][0], [1, 2])
    np.testing.assert_array_equal(h["val/acc"][1], [50, 60])
    cols = plots.history_from_json({"history": {"epoch": [0, 1, 2], "acc": [1.0, 2.0, 3.0]}})
    assert list(cols) == ["acc"] and cols["acc"][0].tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="r.json.*history"):
        plots.history_from_json({"history": 3}, "r.json")


def test_param_points_lookup_and_errors(tmp_path: Path) -> None:
    a = plots.load_run(_write_run(tmp_path / "a", "adapterx", 415_000, 88.4))
    (pt,) = plots.param_points([a])
    assert (pt.label, pt.trainable, pt.accuracy, pt.total) == ("adapterx", 415_000, 88.4, 22_099_752)
    flat = tmp_path / "flat" / "results.json"
    flat.parent.mkdir()
    flat.write_text(json.dumps({"trainable_params": 10, "acc": 0.5}))
    (p2,) = plots.param_points([plots.load_run(flat.parent)])
    assert p2.label == "flat" and p2.trainable == 10 and p2.accuracy == 0.5  # name from the folder
    broken = tmp_path / "b" / "results.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"acc": 1.0}))
    with pytest.raises(DataError, match=r"b/results.json: no trainable parameter count"):
        plots.param_points([plots.load_run(broken)])
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        plots.load_run(tmp_path / "bad.json")


def test_tensorboard_scalars_are_read(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for s in range(5):
        w.add_scalar("train/loss", 1.0 / (s + 1), s)
    w.close()
    scalars = plots.read_tensorboard(tmp_path / "tb")
    np.testing.assert_array_equal(scalars["train/loss"][0], np.arange(5))
    np.testing.assert_allclose(scalars["train/loss"][1], 1.0 / np.arange(1, 6), rtol=1e-6)
    run = plots.load_run(tmp_path / "tb", need_history=True)
    out = plots.plot_curves([run], tmp_path / "tb.png")
    _png(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no TensorBoard event files"):
        plots.read_tensorboard(empty)


def test_each_chart_renders(tmp_path: Path) -> None:
    runs = [plots.load_run(_write_run(tmp_path / n, n, t, a, i)) for i, (n, t, a) in
            enumerate([("adapterx", 415_000, 88.4), ("dapt", 1_100_000, 87.1), ("full", 22_099_752, 88.3)])]
    _png(plots.plot_curves(runs, tmp_path / "curves.png"))
    with pytest.raises(InputError, match="not in any run"):
        plots.plot_curves(runs, tmp_path / "x.png", metrics=["nope"])
    _png(plots.plot_accuracy_vs_params(plots.param_points(runs), tmp_path / "params.png"))
    usage = plots.usage_from_run(runs[0])
    assert usage.shape == (3, 4)
    _png(plots.plot_expert_usage(usage, tmp_path / "usage.png"))
    cells = plots.fewshot_cells(runs[0])
    assert cells["10way20shot"] == pytest.approx((95.0, np.std([94, 95, 96])))
    assert cells["5way10shot"] == (96.3, 2.5)
    _png(plots.plot_fewshot_table({r.name: plots.fewshot_cells(r) for r in runs}, tmp_path / "fs.png"))
    with pytest.raises(InputError, match="blocks, experts"):
        plots.plot_expert_usage(np.ones(3), tmp_path / "u.png")


def test_plot_command_line(tmp_path: Path) -> None:
    tool = load_script("tools/visualize.py")
    a = _write_run(tmp_path / "a", "adapterx", 415_000, 88.4)
    b = _write_run(tmp_path / "b", "full", 22_099_752, 88.3)
    for kind in ("curves", "params", "fewshot"):
        assert tool.main(["plot", kind, "--results", str(a), str(b), "--out", str(tmp_path / f"{kind}.png")]) == 0
        _png(tmp_path / f"{kind}.png")
    assert tool.main(["plot", "usage", "--results", str(a), "--out", str(tmp_path / "usage.png")]) == 0
    assert tool.main(["plot", "params", "--results", str(a), "--labels", "x", "y", "--out",
                      str(tmp_path / "n.png")]) == 2


def test_trainer_style_results_are_understood(tmp_path: Path) -> None:
    """The trainer's layout (as scripts/summarize_vtab.py reads it): a ``best`` mapping with ``acc`` and the resolved
    ``config``, whose peft section names the method."""
    d = tmp_path / "exp"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "best": {"acc": 76.5, "epoch": 90}, "params": {"trainable": 170_000, "total": 85_800_000},
        "config": {"peft": {"type": "adaptformer", "x_mode": True}}}))
    (pt,) = plots.param_points([plots.load_run(d)])
    assert (pt.label, pt.accuracy, pt.trainable) == ("adaptformer_x", 76.5, 170_000)
    (d / "results.json").write_text(json.dumps({"best": {"acc": 68.9}, "trainable_params": 85_800_000,
                                                "config": {"model": {"type": "vit"}}}))
    assert plots.load_run(d).name == "full"
