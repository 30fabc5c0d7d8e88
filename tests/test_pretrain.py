"""tools/pretrain.py: a CLI pretraining writes a pretrain.pth that tools/train.py --ckpt fine-tunes from (every
encoder tensor loaded), the pretraining configs resolve, and an interrupted pretraining resumes to the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pointpeft.config import load_config
from pointpeft.engine import train_state as ck
from pointpeft.engine.launch import run
from pointpeft.engine.trainer import Trainer, build_task
from pointpeft.models import build_point_transformer, load_pretrained
from pointpeft.models.mae import PointMAE

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "cfgs" / "pretrain" / "synthetic_small.yaml"
# A tiny MAE on a handful of synthetic clouds: a few seconds per run.
TINY = ["model.arch=point_mae_tiny", "model.decoder_depth=1", "data.train.num_samples=48",
        "data.val.num_samples=24", "data.batch_size=16", "train.max_steps_per_epoch=2", "train.amp=fp32",
        "scheduler.warmup_epochs=1"]


def _encoder_keys(model: torch.nn.Module) -> list[str]:
    """The fine-tune model's backbone tensors that a Point-MAE pretraining provides (no CLS, no head)."""
    return [k for k in model.state_dict() if k.startswith(("encoder.", "pos_embed.", "blocks.", "norm."))]


def test_cli_pretrain_then_finetune_loads_every_encoder_key(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tools" / "pretrain.py"), "--config", str(SYNTH), "--root", str(tmp_path),
           "--exp-name", "mae", "--epochs", "2", *TINY, "pretrain.probe=null"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "synthetic_small" / "pretrain" / "mae"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "finished" and res["task"] == "mae_pretrain" and res["epochs_done"] == 2
    assert [row["epoch"] for row in res["history"]] == [1, 2]
    assert all(row["val_cd_l2"] > 0 for row in res["history"])
    pth = run_dir / "pretrain.pth"
    blob = torch.load(pth, map_location="cpu", weights_only=True)
    assert blob["epoch"] == 2 and blob["config"]["arch"] == "point_mae_tiny"
    assert any(k.startswith("MAE_encoder.blocks.blocks.1.") for k in blob["base_model"])

    # load_pretrained directly: every backbone tensor is filled from the file, with the pretrained values
    ft = build_point_transformer("point_mae_tiny", num_classes=12)
    report = load_pretrained(ft, pth)
    enc = _encoder_keys(ft)
    assert enc and set(enc) <= set(report.loaded_keys)
    assert not [k for k in report.missing_keys if k in enc]
    assert all(k.startswith(("cls_", "cls_head_finetune.")) for k in report.missing_keys), report.missing_keys
    sd = ft.state_dict()
    w = "blocks.blocks.1.mlp.fc2.weight"
    assert torch.equal(sd[w], blob["base_model"][f"MAE_encoder.{w}"])

    # ... and through the fine-tuning CLI (what tools/train.py runs), Adapter-X on the tiny backbone
    ft_cfg = REPO / "cfgs" / "finetune" / "synthetic" / "adapterx.yaml"
    rc = run(["--config", str(ft_cfg), "--ckpt", str(pth), "--root", str(tmp_path), "--exp-name", "ft",
              "--epochs", "1", "model.type=point_mae_tiny", "data.train.num_samples=48",
              "data.val.num_samples=24", "train.max_steps_per_epoch=2", "train.amp=fp32"])
    assert rc == 0
    ft_dir = tmp_path / "adapterx" / "synthetic" / "ft"
    ft_res = json.loads((ft_dir / "results.json").read_text())
    assert ft_res["pretrained"] == str(pth) and ft_res["status"] == "finished"
    log = (ft_dir / "train.log").read_text()
    line = next(ln for ln in log.splitlines() if "pretrained weights:" in ln)
    assert f"loaded {len(report.loaded_keys)}," in line and f"missing {len(report.missing_keys)}," in line


def test_pretrain_task_builds_a_model_whose_export_fits_its_finetune_arch() -> None:
    """The synthetic config's MAE pairs with model.type: point_mae_small at fine-tune time (same widths)."""
    cfg = load_config(SYNTH)
    assert cfg["model"]["arch"] == "point_mae_small"
    mae = build_task(cfg).build_model(cfg)
    assert isinstance(mae, PointMAE)
    ft = build_point_transformer("point_mae_small", num_classes=12)
    enc = {k: v.shape for k, v in mae.MAE_encoder.state_dict().items()}
    for k in _encoder_keys(ft):
        assert enc[k] == ft.state_dict()[k].shape, k


@pytest.mark.parametrize("name", ["shapenet55", "modelnet40", "synthetic_small"])
def test_pretrain_configs_resolve(name: str) -> None:
    cfg = load_config(REPO / "cfgs" / "pretrain" / f"{name}.yaml")
    assert cfg["train"]["task"] == "mae_pretrain"
    assert cfg["model"]["type"] == "point_mae_pretrain" and cfg["model"]["mask_ratio"] == 0.6
    assert cfg["model"]["num_group"] == 64 and cfg["model"]["group_size"] == 32
    assert cfg["optimizer"]["lr"] == 1.0e-3 and cfg["optimizer"]["weight_decay"] == 0.05
    assert cfg["data"]["train"]["npoints"] == 1024
    build_task(cfg)  # the pretrain: section (probe options included) is valid
    if name == "shapenet55":
        assert cfg["data"]["batch_size"] == 128 and cfg["train"]["epochs"] == 300
        assert cfg["scheduler"]["warmup_epochs"] == 10 and cfg["data"]["train"]["sampling"] == "fps"


def test_interrupted_pretraining_resumes_to_identical_weights(tmp_path: Path) -> None:
    overrides = [*TINY, "train.epochs=2", "pretrain.probe=null"]
    full = Trainer(load_config(SYNTH, overrides), tmp_path / "full")
    full.fit()

    part = Trainer(load_config(SYNTH, overrides), tmp_path / "part")
    part.fit(until_epoch=1)
    assert part.epoch == 1 and not (tmp_path / "part" / "pretrain.pth").exists()
    del part
    resumed = Trainer(load_config(SYNTH, overrides), tmp_path / "part")
    resumed.restore(ck.read_train_state(tmp_path / "part" / ck.LAST_NAME))
    resumed.fit()

    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]
    exported = torch.load(tmp_path / "part" / "pretrain.pth", map_location="cpu", weights_only=True)
    assert torch.equal(exported["base_model"]["mask_token"], a["mask_token"])
