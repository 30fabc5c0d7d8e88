"""tools/demo.py --quick: the whole demo flow (pretrain -> three fine-tunes -> table, JSON, figures) on tiny sizes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pointpeft.config import load_config
from pointpeft.models import build_point_transformer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--quick", "--out", str(out)],
                          cwd=out.parent, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout


def test_quick_demo_prints_the_table(quick_demo: tuple[Path, str]) -> None:
    _, stdout = quick_demo
    assert "| method" in stdout and "trainable params" in stdout and "trainable %" in stdout
    for label in ("Adapter-X", "full fine-tuning", "linear probe"):
        row = next(ln for ln in stdout.splitlines() if ln.startswith(f"| {label}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5
        assert int(cells[1].replace(",", "")) > 0
        assert 0 < float(cells[2]) <= 100 and 0 <= float(cells[3]) <= 100 and float(cells[4]) >= 0
    assert re.search(r"Chamfer-L2 \d+\.\d+ \(epoch 1\) -> \d+\.\d+ \(epoch 2\)", stdout)


def test_quick_demo_writes_summary_runs_and_figures(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    summary = json.loads((out / "demo-results.json").read_text())
    assert summary["quick"] is True and summary["data"] == "synthetic"
    runs = {r["method"]: r for r in summary["runs"]}
    assert set(runs) == {"adapterx", "full", "linear"}
    full_total = runs["full"]["total"]
    assert runs["full"]["trainable"] == full_total and runs["full"]["percent"] == pytest.approx(100.0)
    assert runs["linear"]["trainable"] < runs["adapterx"]["trainable"] < full_total
    for r in runs.values():
        assert 0.0 <= r["acc"] <= 100.0 and r["time_s"] > 0 and r["epochs"] == 2
        res = json.loads((Path(r["run_dir"]) / "results.json").read_text())
        assert res["status"] == "finished" and res["pretrained"] == summary["pretrain"]["ckpt"]
        assert res["last"]["val_acc"] == pytest.approx(r["acc"])
        assert res["params"]["trainable"] == r["trainable"]
        assert list((Path(r["run_dir"]) / "tb").glob("events.out.tfevents.*"))
        assert "pretrained weights:" in (Path(r["run_dir"]) / "train.log").read_text()
    pre = summary["pretrain"]
    assert pre["cd_l2"] > 0 and pre["epochs"] == 2 and Path(pre["ckpt"]).is_file()
    assert summary["comparison"]["adapterx_minus_linear"] == pytest.approx(
        runs["adapterx"]["acc"] - runs["linear"]["acc"], abs=0.01)
    assert summary["total_time_s"] > 0
    assert (out / "demo-table.md").read_text().strip() == summary["table"]
    for key in ("curves", "pretrain_curves", "accuracy_vs_params", "clouds", "reconstruction"):
        png = Path(summary["figures"][key])
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, key
    assert summary["figures"]["renderer"] in ("open3d", "matplotlib")


def test_demo_configs_pair_pretraining_with_finetuning() -> None:
    """The demo's pretrain.pth must load key for key: pretraining and fine-tune configs describe one backbone."""
    from pointpeft.models.mae import build_point_mae_pretrain

    pre = dict(load_config(REPO / "cfgs" / "demo" / "pretrain.yaml")["model"])
    pre.pop("type")
    enc = build_point_mae_pretrain(**pre).MAE_encoder
    enc_sd = enc.state_dict()
    for data in ("synthetic", "modelnet40"):
        cfgs = {m: load_config(REPO / "cfgs" / "demo" / data / f"{m}.yaml") for m in ("adapterx", "full", "linear")}
        assert all(c["peft"]["type"] == m for m, c in cfgs.items())
        node = dict(cfgs["adapterx"]["model"])
        assert all(dict(c["model"]) == node for c in cfgs.values())  # one backbone per data set
        ft = build_point_transformer(node.pop("type"), **node)
        backbone = {k: v.shape for k, v in ft.state_dict().items()
                    if k.startswith(("encoder.", "pos_embed.", "blocks.", "norm."))}
        assert backbone and all(enc_sd[k].shape == shape for k, shape in backbone.items()), data
        assert (ft.cfg.num_group, ft.cfg.group_size) == (enc.cfg.num_group, enc.cfg.group_size)
