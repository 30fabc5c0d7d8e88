"""cfgs/vit: generated and up to date; every config loads (strict keys), names its VTAB task with the right class
count, and its model / data / peft nodes build (ViT-B on the meta device, data on a fake task folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pointpeft.config import load_config
from pointpeft.data import build_dataset
from pointpeft.data.vision import VTAB_TASKS
from pointpeft.models.vit import build_vit
from pointpeft.peft import build_peft_config, get_peft_model, trainable_parameter_report

REPO = Path(__file__).resolve().parents[1]
CFGS = REPO / "cfgs" / "vit"
METHODS = ("full", "linear", "vpt_deep", "lora", "adapter", "adaptformer", "adapterx", "adaptformer_x")


def test_generated_configs_are_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_vtab_cfgs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_task_and_method_has_a_config() -> None:
    for task in VTAB_TASKS:
        assert sorted(p.stem for p in (CFGS / task).glob("*.yaml")) == sorted(METHODS)
    assert sorted(p.stem for p in (CFGS / "digits").glob("*.yaml")) == sorted(METHODS)


def test_recipe() -> None:
    cfg = load_config(CFGS / "oxford_iiit_pet" / "adapterx.yaml")
    assert cfg["optimizer"] == {"type": "adamw", "lr": 1e-3, "weight_decay": 1e-4}
    assert cfg["data"]["batch_size"] == 64 and cfg["train"]["epochs"] == 100
    assert cfg["scheduler"] == {"type": "cosine", "warmup_epochs": 10}
    assert cfg["model"]["drop_path_rate"] == 0.1 and cfg["model"]["num_classes"] == 37
    assert cfg["data"]["train"]["split"] == "train800val200" and cfg["data"]["val"]["split"] == "test"
    assert cfg.source_of("optimizer.lr").endswith("_base_/vtab1k.yaml")
    assert load_config(CFGS / "cifar" / "adaptformer_x.yaml")["peft"] == {"type": "adaptformer", "x_mode": True}


@pytest.mark.parametrize("task", list(VTAB_TASKS))
def test_task_configs_load_and_build(task: str, tmp_path: Path) -> None:
    n_classes = VTAB_TASKS[task][0]
    tdir = tmp_path / task
    (tdir / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tdir / "images" / "a.png")
    for split in ("train800val200", "test"):
        (tdir / f"{split}.txt").write_text(f"images/a.png {n_classes - 1}\n")
    for method in METHODS:
        cfg = load_config(CFGS / task / f"{method}.yaml", [f"data.train.root={tmp_path}", f"data.val.root={tmp_path}"])
        assert cfg["model"]["num_classes"] == n_classes
        for split in ("train", "val"):
            ds = build_dataset(cfg["data"][split], cfg)
            assert ds.task == task and ds.num_classes == n_classes and len(ds) == 1
        build_peft_config(dict(cfg["peft"]))


def test_vit_b_configs_build_on_meta() -> None:
    """Every method's config on ViT-B/16 (weights left out: the file is not in the repo) injects and counts."""
    pcts = {}
    for method in METHODS:
        cfg = load_config(CFGS / "cifar" / f"{method}.yaml", ["model.weights=null"])
        node = {k: v for k, v in cfg["model"].items() if k != "type"}
        with torch.device("meta"):
            model = get_peft_model(build_vit(**node), dict(cfg["peft"]))
        pcts[method] = trainable_parameter_report(model)["percent"]
    assert pcts["full"] == 100.0 and pcts["linear"] < pcts["adapterx"] < pcts["lora"] < 1.0


def test_digits_configs_build_and_run() -> None:
    for method in METHODS:
        cfg = load_config(CFGS / "digits" / f"{method}.yaml")
        node = {k: v for k, v in cfg["model"].items() if k != "type"}
        model = get_peft_model(build_vit(**node), dict(cfg["peft"]))
        ds = build_dataset(cfg["data"]["train"], cfg)
        assert ds.num_classes == cfg["model"]["num_classes"] == 10
        x = torch.stack([ds[i][0] for i in range(2)])
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 10)
