"""The fine-tuning recipe against the originals (docs/parity.md, section recipe): every parity decision pinned by
what the resolved configs and the data sets do, not by what the YAML says."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pointpeft.config import load_config
from pointpeft.data import build_dataset
from pointpeft.data.transforms import FpsResample, TrainResampling
from pointpeft.errors import ConfigError
from pointpeft.models.tokenizer import Group
from pointpeft.ops import farthest_point_sample

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "cfgs" / "finetune"
SCAN = ("scanobjectnn_objbg", "scanobjectnn_objonly", "scanobjectnn_hardest")
REAL_3D = ("modelnet40", *SCAN)


def _leaves(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def _train_resamples(node: dict) -> bool:
    """The node redraws its clouds at every fetch: npoints_fps on the data set, or fps_resample first."""
    first = (node.get("transforms") or [{}])[0]
    return node.get("npoints_fps") is not None or (isinstance(first, dict) and first.get("type") == "fps_resample")


def _h5(path: Path, clouds: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"] = clouds.astype(np.float32)
        f["label"] = np.arange(len(clouds), dtype=np.int64)[:, None] % 2


def _clouds(m: int, n: int, seed: int = 0) -> np.ndarray:
    xyz = np.random.default_rng(seed).normal(size=(m, n, 3)).astype(np.float32)
    return xyz / np.linalg.norm(xyz, axis=-1).max(axis=-1)[:, None, None]


def test_scanobjectnn_uses_128_groups_of_32_and_modelnet_64() -> None:
    """Point-MAE / DAPT / IDPT cfgs/finetune_scan_*.yaml: num_group 128 on 2048 points; ModelNet40 and few-shot 64."""
    from pointpeft import build_model

    for ds in SCAN:
        for leaf in _leaves(FINETUNE / ds):
            cfg = load_config(leaf)
            assert (cfg["model"]["num_group"], cfg["model"]["group_size"]) == (128, 32), leaf
            assert cfg["data"]["train"]["npoints"] == cfg["data"]["val"]["npoints"] == 2048, leaf

    def model(path: Path):  # noqa: ANN202 - a narrow block is enough to see the grouping
        small = ["model.depth=1", "model.trans_dim=32", "model.encoder_dims=32", "model.num_heads=1"]
        return build_model(dict(load_config(path, small)["model"]))

    scan = model(FINETUNE / "scanobjectnn_hardest" / "full.yaml")
    mn40 = model(FINETUNE / "modelnet40" / "full.yaml")
    few = model(REPO / "cfgs" / "fewshot" / "full.yaml")
    assert (scan.group_divider.num_group, scan.group_divider.group_size) == (128, 32)
    assert (mn40.group_divider.num_group, mn40.group_divider.group_size) == (64, 32)
    assert few.group_divider.num_group == 64


def test_every_3d_recipe_redraws_training_clouds_and_not_test_clouds() -> None:
    folders = [FINETUNE / d for d in (*REAL_3D, "synthetic")]
    leaves = [p for d in folders for p in _leaves(d)] + _leaves(REPO / "cfgs" / "fewshot")
    assert len(leaves) > 60
    for leaf in leaves:
        cfg = load_config(leaf)
        assert _train_resamples(cfg["data"]["train"]), leaf
        assert not _train_resamples(cfg["data"]["val"]), leaf
    for ds, n_fps in (("modelnet40", 1200), *((s, 2400) for s in SCAN)):  # the original's point_all
        assert load_config(FINETUNE / ds / "full.yaml")["data"]["train"]["npoints_fps"] == n_fps
    assert load_config(REPO / "cfgs" / "fewshot" / "full.yaml")["data"]["train"]["npoints_fps"] == 1200


def test_the_recipe_numbers_of_point_mae() -> None:
    """cfgs/finetune_*.yaml and cfgs/fewshot.yaml of Point-MAE: AdamW 5e-4 / 0.05, cosine 10 warm-up, 300 epochs
    (150 few-shot), batch 32, clip 10, drop path 0.1, plain cross-entropy, scale & translate."""
    for leaf in [FINETUNE / d / "full.yaml" for d in REAL_3D] + [REPO / "cfgs" / "fewshot" / "full.yaml"]:
        cfg = load_config(leaf)
        assert cfg["optimizer"] == {"type": "adamw", "lr": 5e-4, "weight_decay": 0.05}, leaf
        assert cfg["scheduler"]["warmup_epochs"] == 10 and cfg["scheduler"]["min_lr"] == 1e-6
        assert cfg["train"]["epochs"] == (150 if "fewshot" in leaf.parts else 300), leaf
        assert cfg["data"]["batch_size"] == 32 and cfg["train"]["grad_clip"] == 10.0
        assert cfg["model"]["drop_path_rate"] == 0.1
        assert cfg["train"].get("label_smoothing", 0.0) == 0.0
        assert cfg["data"]["train"]["transforms"] == [{"type": "scale_translate"}]
        assert not cfg["data"]["val"].get("transforms")


def _centres(points: torch.Tensor, num_group: int = 16) -> torch.Tensor:
    return Group(num_group, 8, backend="torch")(points[None])[1][0]


def test_two_epochs_of_the_same_cloud_get_different_patch_centres(tmp_path: Path) -> None:
    """The resolved ModelNet40 recipe on a 1024-point HDF5 file (the shared copy's size): every fetch of cloud 0 is
    a new order of its points, so the model's FPS (from point 0) picks other centres; the switch off repeats them."""
    _h5(tmp_path / "mn" / "ply_data_train0.h5", _clouds(4, 1024))
    cfg = load_config(FINETUNE / "modelnet40" / "adapterx.yaml", [f"data.train.root={tmp_path / 'mn'}"])
    node = {k: v for k, v in cfg["data"]["train"].items() if k != "transforms"}  # the redraw alone
    ds = build_dataset(node)
    torch.manual_seed(0)
    a, b = ds[0][0], ds[0][0]
    assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))  # the same 1024 points ...
    assert not torch.allclose(_centres(a), _centres(b))  # ... other patch centres
    fixed = build_dataset({**node, "npoints_fps": None})
    assert torch.equal(_centres(fixed[0][0]), _centres(fixed[0][0]))


def test_scanobjectnn_redraw_keeps_every_stored_point(tmp_path: Path) -> None:
    """2048 stored points <= npoints_fps 2400: the original's FPS keeps them all, so a fetch is a permutation."""
    _h5(tmp_path / "main_split" / "training_objectdataset_augmentedrot_scale75.h5", _clouds(2, 2048))
    cfg = load_config(FINETUNE / "scanobjectnn_hardest" / "full.yaml", [f"data.train.root={tmp_path}",
                                                                         "data.train.transforms=[]"])
    ds = build_dataset(cfg["data"]["train"])
    torch.manual_seed(1)
    a, b = ds[1][0], ds[1][0]
    stored = torch.from_numpy(ds.points[1])
    assert a.shape == (2048, 3) and not torch.equal(a, b)
    assert torch.equal(a[a[:, 0].argsort()], stored[stored[:, 0].argsort()])


def test_larger_files_fps_a_pool_then_draw(tmp_path: Path) -> None:
    """A cloud with more points than npoints_fps (Point-MAE's 8192-point files): per_item runs FPS from a random
    start at every fetch (as the original), cached keeps the FPS-from-point-0 pool and draws from it."""
    x = torch.from_numpy(_clouds(1, 600, seed=2)[0])
    torch.manual_seed(0)
    draws = [FpsResample(100, 200)(x) for _ in range(2)]
    for d in draws:
        assert d.shape == (100, 3)
        assert torch.isin(d[:, 0], x[:, 0]).all()
    pool = x[farthest_point_sample(x[None], 200, backend="torch")[0]]
    assert not all(torch.isin(d[:, 0], pool[:, 0]).all() for d in draws)  # the pool moves with the start
    cached = TrainResampling(100, 200, "cached")
    assert cached.keep(600) == 200 and cached.keep(150) == 150 and cached.transform.npoints_fps is None
    per_item = TrainResampling(100, 200)
    assert per_item.keep(600) == 600 and per_item.transform.npoints_fps == 200
    assert TrainResampling(100, None).keep(600) == 100 and TrainResampling(100, None).transform is None
    # the data set side: ModelNet40 with 600-point files
    _h5(tmp_path / "mn" / "ply_data_train0.h5", _clouds(2, 600, seed=3))
    node = {"type": "modelnet40", "root": str(tmp_path / "mn"), "split": "train", "npoints": 100, "npoints_fps": 200}
    ds_cached = build_dataset({**node, "fps_pool": "cached"})
    assert ds_cached.points.shape == (2, 200, 3)
    got = ds_cached[0][0]
    assert got.shape == (100, 3) and torch.isin(got[:, 0], torch.from_numpy(ds_cached.points[0][:, 0])).all()
    assert build_dataset(node).points.shape == (2, 600, 3)
    with pytest.raises(ConfigError, match="npoints_fps"):
        build_dataset({**node, "npoints_fps": 50})
    with pytest.raises(ConfigError, match="fps_pool"):
        build_dataset({**node, "fps_pool": "sometimes"})


def test_fewshot_support_set_is_redrawn(tmp_path: Path) -> None:
    items = [(c, i % 5, i % 5) for i, c in enumerate(_clouds(10, 1024, seed=4))]
    (tmp_path / "5way2shot").mkdir()
    (tmp_path / "5way2shot" / "0.pkl").write_bytes(pickle.dumps({"train": items, "test": items}))
    cfg = load_config(REPO / "cfgs" / "fewshot" / "lora.yaml")
    node = {**cfg["data"]["train"], "root": str(tmp_path), "way": 5, "shot": 2, "fold": 0, "transforms": []}
    ds = build_dataset(node)
    assert not torch.equal(_centres(ds[3][0]), _centres(ds[3][0]))
    query = build_dataset({**cfg["data"]["val"], "root": str(tmp_path), "way": 5, "shot": 2, "fold": 0})
    assert torch.equal(query[3][0], query[3][0])


def test_dapt_x_is_one_config_per_data_set() -> None:
    """The paper's 3D row: DAPT with x_mode, DAPT's drop path, on every data set and in few-shot."""
    from pointpeft.peft import build_peft_config

    for leaf in [FINETUNE / d / "dapt_x.yaml" for d in (*REAL_3D, "synthetic")] + [REPO / "cfgs/fewshot/dapt_x.yaml"]:
        cfg = load_config(leaf)
        assert cfg["peft"]["type"] == "dapt" and cfg["peft"]["x_mode"] is True, leaf
        assert cfg["model"]["drop_path_rate"] == load_config(leaf.with_name("dapt.yaml"))["model"]["drop_path_rate"]
        assert build_peft_config(dict(cfg["peft"])).x_mode


def test_full_trains_everything_and_linear_the_head_with_cls() -> None:
    """Point-MAE's runner optimises every parameter; IDPT's ``part: only_new`` (the head-only baseline) every
    parameter named 'cls': cls_token, cls_pos, cls_head_finetune. ViT linear probing: the head alone."""
    from pointpeft import build_model, get_peft_model

    def trainable(path: Path) -> set[str]:
        cfg = load_config(path, ["model.type=point_mae_tiny"])
        model = get_peft_model(build_model(dict(cfg["model"])), dict(cfg["peft"]))
        return {n for n, p in model.named_parameters() if p.requires_grad}

    model = build_model({"type": "point_mae_tiny", "num_classes": 40})
    everything = {n for n, _ in model.named_parameters()}
    for ds in REAL_3D:
        assert trainable(FINETUNE / ds / "full.yaml") == everything
        lin = trainable(FINETUNE / ds / "linear.yaml")
        assert lin == {n for n in everything if n.startswith(("cls_token", "cls_pos", "cls_head_finetune"))}, lin
    assert load_config(REPO / "cfgs/vit/cifar/linear.yaml")["peft"]["train_cls_token"] is False


def test_head_loss_and_loader_as_the_originals() -> None:
    """PointTransformer's cls_head_finetune on concat(CLS, max over tokens): 768-256-256-C with BN, ReLU and
    dropout 0.5; plain cross-entropy; the training loader drops its last partial batch (not on few-shot folds)."""
    from pointpeft import build_model

    cfg = load_config(FINETUNE / "modelnet40" / "full.yaml", ["model.depth=1"])
    head = build_model(dict(cfg["model"])).cls_head_finetune
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 256), (256, 256), (256, 40)]
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    for ds in REAL_3D:
        assert load_config(FINETUNE / ds / "full.yaml")["data"]["drop_last"] is True
    assert load_config(REPO / "cfgs" / "fewshot" / "full.yaml")["data"].get("drop_last", "auto") == "auto"
