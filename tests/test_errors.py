"""Bad inputs and broken files fail loudly and precisely: one parametrised table of (case, builder, exception, regex).

Each builder gets a fresh ``tmp_path``, writes whatever broken file it needs and makes the failing call; the test
checks the exception type and that the message names what was wrong (file, field, key, shape, index). A marker
file ``tmp_path / "pwned"`` is checked after every case: a malicious pickle must be refused *before* it runs.
docs/errors.md lists the same cases with example messages.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from pointpeft.config import build_dataclass, load_config
from pointpeft.data.base import check_labels
from pointpeft.data.fewshot import FewShot
from pointpeft.data.modelnet40 import MODELNET40_CLASSES, ModelNet40
from pointpeft.errors import CheckpointError, ConfigError, DataError, InputError, UnsafePickleError
from pointpeft.models.losses import check_targets, cross_entropy
from pointpeft.models.mae import build_point_mae_pretrain
from pointpeft.models.point_transformer import PointTransformerConfig, build_point_transformer
from pointpeft.models.pretrained import load_pretrained
from pointpeft.models.tokenizer import Group
from pointpeft.models.vit import build_vit, load_vit_weights
from pointpeft.ops import farthest_point_sample, knn_query
from pointpeft.peft import get_peft_model, load_adapter, save_adapter
from pointpeft.peft.state import ADAPTER_CONFIG, ADAPTER_WEIGHTS

REPO = Path(__file__).resolve().parents[1]
MARKER = "pwned"


# ---------------------------------------------------------------------------------------------------------------
# shared tiny models and files
# ---------------------------------------------------------------------------------------------------------------
@cache
def tiny() -> torch.nn.Module:
    """point_mae_tiny, 5 classes, eval mode (16 groups of 8 points: clouds need >= 16 points)."""
    torch.manual_seed(0)
    return build_point_transformer("point_mae_tiny", num_classes=5).eval()


@cache
def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vit("vit_test_tiny", num_classes=3).eval()


def clouds(b: int = 2, n: int = 64) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1


def with_value(b: int, n: int, c: int, value: float) -> torch.Tensor:
    x = clouds(3)
    x[b, n, c] = value
    return x


class _System:
    """Unpickling this runs ``os.system("touch <marker>")`` — unless the loader refuses it first."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.target}",))


def modelnet_h5(tmp: Path, data: np.ndarray | None = None, label: np.ndarray | None = None,
                keys: tuple[str, str] = ("data", "label")) -> Path:
    """A one-file ModelNet40 HDF5 layout (4 clouds of 32 points) in ``tmp / 'mn'``; returns the folder."""
    folder = tmp / "mn"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 32, 3)).astype(np.float32) if data is None else data
    label = np.array([[0], [1], [2], [3]], dtype=np.int64) if label is None else label
    with h5py.File(folder / "ply_data_train0.h5", "w") as f:
        f[keys[0]] = data
        f[keys[1]] = label
    (folder / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n")
    (folder / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    return folder


def truncate(path: Path, keep: float = 0.5) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def saved_checkpoint(tmp: Path, model: torch.nn.Module, name: str = "ckpt.pth", container: str = "model") -> Path:
    path = tmp / name
    torch.save({container: model.state_dict(), "epoch": 3}, path)
    return path


def saved_adapter(tmp: Path, peft: dict | None = None) -> Path:
    torch.manual_seed(0)
    model = get_peft_model(build_point_transformer("point_mae_tiny", num_classes=5), peft or {"type": "lora"})
    return save_adapter(model, tmp / "adapter")


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------------
# builders: each one makes the failing call
# ---------------------------------------------------------------------------------------------------------------
def _fewshot_evil(tmp: Path) -> None:
    folder = tmp / "fs" / "5way10shot"
    folder.mkdir(parents=True)
    evil = {"train": [(np.zeros((64, 3), np.float32), 0, _System(tmp / MARKER))], "test": []}
    (folder / "0.pkl").write_bytes(pickle.dumps(evil))
    FewShot(root=tmp / "fs", way=5, shot=10, fold=0, npoints=32)


def _modelnet_dat_evil(tmp: Path) -> None:
    folder = tmp / "dat"
    folder.mkdir()
    evil = [[_System(tmp / MARKER)], [np.array([0])]]
    (folder / "modelnet40_train_8192pts_fps.dat").write_bytes(pickle.dumps(evil))
    ModelNet40(root=folder, npoints=1024)


def _pth_evil(tmp: Path) -> None:
    path = tmp / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": _System(tmp / MARKER)}, path)
    load_pretrained(build_point_transformer("point_mae_tiny", num_classes=5), path)


def _adapter_evil_bin(tmp: Path) -> None:
    """A pickle dropped where the safetensors file belongs: read as safetensors, never unpickled."""
    directory = saved_adapter(tmp)
    (directory / ADAPTER_WEIGHTS).write_bytes(pickle.dumps(_System(tmp / MARKER)))
    load_adapter(build_point_transformer("point_mae_tiny", num_classes=5), directory)


def _adapter_extra_tensor(tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = saved_adapter(tmp)
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    tensors["blocks.0.attn.nonexistent"] = torch.zeros(2)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    load_adapter(build_point_transformer("point_mae_tiny", num_classes=5), directory)


def _adapter_missing_tensor(tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = saved_adapter(tmp)
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    load_adapter(build_point_transformer("point_mae_tiny", num_classes=5), directory)


def _adapter_bad_json(tmp: Path) -> None:
    directory = saved_adapter(tmp)
    (directory / ADAPTER_CONFIG).write_text('{"peft_config": ')
    load_adapter(build_point_transformer("point_mae_tiny", num_classes=5), directory)


def _adapter_unknown_method(tmp: Path) -> None:
    directory = saved_adapter(tmp)
    meta = json.loads((directory / ADAPTER_CONFIG).read_text())
    meta["peft_config"]["type"] = "lroa"
    (directory / ADAPTER_CONFIG).write_text(json.dumps(meta))
    load_adapter(build_point_transformer("point_mae_tiny", num_classes=5), directory)


def _adapter_other_config(tmp: Path) -> None:
    directory = saved_adapter(tmp, {"type": "lora", "r": 8})
    model = get_peft_model(build_point_transformer("point_mae_tiny", num_classes=5), {"type": "lora", "r": 4})
    load_adapter(model, directory)


def _adapter_no_weights(tmp: Path) -> None:
    directory = saved_adapter(tmp)
    (directory / ADAPTER_WEIGHTS).unlink()
    load_adapter(build_point_transformer("point_mae_tiny", num_classes=5), directory)


def _config_with_base(tmp: Path) -> None:
    write(tmp, "a.yaml", "_base_: b.yaml\nseed: 1\n")
    write(tmp, "b.yaml", "_base_: a.yaml\n")
    load_config(tmp / "a.yaml")


def _config_model_key(tmp: Path) -> None:
    write(tmp, "base.yaml", "model:\n  type: point_mae_tiny\n  depth: 2\n")
    cfg = load_config(write(tmp, "run.yaml", "_base_: base.yaml\nmodel:\n  detph: 3\n"))
    node = {k: v for k, v in cfg["model"].items() if k != "type"}
    build_dataclass(PointTransformerConfig, node, "model", cfg)


def _config_model_value(tmp: Path) -> None:
    cfg = load_config(write(tmp, "run.yaml", "model:\n  trans_dim: 65\n  encoder_dims: 65\n  num_heads: 2\n"))
    build_dataclass(PointTransformerConfig, cfg["model"], "model", cfg)


Case = tuple[str, Callable[[Path], Any], type[BaseException], str]

INPUT_CASES: list[Case] = [
    ("points-nan", lambda t: tiny()(with_value(2, 10, 1, float("nan"))), InputError,
     r"points: NaN or inf at cloud 2, point 10 \(1 bad points"),
    ("points-inf", lambda t: tiny()(with_value(0, 5, 0, float("inf"))), InputError,
     r"NaN or inf at cloud 0, point 5"),
    ("points-fewer-than-groups", lambda t: tiny()(clouds(2, 10)), InputError,
     r"at least 16 points \(num_group / group_size\), got N=10"),
    ("points-zero", lambda t: tiny()(torch.zeros(2, 0, 3)), InputError, r"at least 16 points.*got N=0"),
    ("points-empty-batch", lambda t: tiny()(torch.zeros(0, 64, 3)), InputError, r"empty batch \(B=0\)"),
    ("points-2d", lambda t: tiny()(clouds()[0]), InputError, r"expected shape \(B, N, 3\), got \(64, 3\)"),
    ("points-4d", lambda t: tiny()(clouds()[None]), InputError, r"expected shape \(B, N, 3\), got \(1, 2, 64, 3\)"),
    ("points-with-normals", lambda t: tiny()(torch.rand(2, 64, 6)), InputError, r"got \(2, 64, 6\)"),
    ("points-int-dtype", lambda t: tiny()(torch.randint(0, 5, (2, 64, 3))), InputError,
     r"expected a float tensor, got dtype torch.int64"),
    ("points-numpy", lambda t: tiny()(clouds().numpy()), InputError, r"expected a torch.Tensor .*got ndarray"),
    ("group-size-exceeds-points", lambda t: Group(4, 32)(clouds(1, 20)), InputError,
     r"at least 32 points.*got N=20"),
    ("mae-pretrain-nan", lambda t: build_point_mae_pretrain("point_mae_tiny")(with_value(1, 3, 2, float("nan"))),
     InputError, r"NaN or inf at cloud 1, point 3"),
    ("fps-npoint-exceeds-n", lambda t: farthest_point_sample(clouds(1, 8), 16), InputError,
     r"npoint=16 exceeds the 8 points"),
    ("fps-unknown-backend", lambda t: farthest_point_sample(clouds(), 4, backend="cuda_magic"), InputError,
     r"unknown FPS backend 'cuda_magic'; choices"),
    ("knn-k-exceeds-n", lambda t: knn_query(40, clouds(1, 20), clouds(1, 4)), InputError,
     r"k=40 exceeds the 20 points"),
    ("knn-batch-mismatch", lambda t: knn_query(4, clouds(2), clouds(3)), InputError,
     r"batch sizes differ: xyz has B=2, query has B=3"),
    ("images-wrong-size", lambda t: tiny_vit()(torch.rand(2, 3, 64, 64)), InputError,
     r"images: expected H x W = 32 x 32 \(the model's img_size\), got 64 x 64"),
    ("images-3d", lambda t: tiny_vit()(torch.rand(3, 32, 32)), InputError,
     r"images: expected shape \(B, C, H, W\), got \(3, 32, 32\)"),
    ("images-channels", lambda t: tiny_vit()(torch.rand(2, 1, 32, 32)), InputError,
     r"expected 3 channels, got C=1"),
    ("images-uint8", lambda t: tiny_vit()(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), InputError,
     r"expected a float tensor \(normalised pixels\), got dtype torch.uint8"),
    ("images-nan", lambda t: tiny_vit()(torch.rand(2, 3, 32, 32).index_fill_(0, torch.tensor([1]), float("nan"))),
     InputError, r"NaN or inf in image 1 of the batch \(1 bad image"),
    ("images-points-given", lambda t: tiny_vit()(clouds()), InputError, r"got \(2, 64, 3\)"),
    ("labels-out-of-range", lambda t: check_labels(np.array([0, 1, 7]), 5, "train.h5"), DataError,
     r"train.h5: label 7 at index 2 is outside 0..4"),
    ("labels-negative", lambda t: check_labels(np.array([-1, 1]), 5, "train.h5", offset=100), DataError,
     r"label -1 at index 100 is outside 0..4"),
    ("labels-fractional", lambda t: check_labels(np.array([0.0, 1.5]), 5, "x.h5"), DataError,
     r"x.h5: label at index 1 is not an integer"),
    ("loss-target-out-of-range", lambda t: cross_entropy(torch.zeros(4, 5), torch.tensor([0, 1, 5, 2])),
     InputError, r"labels: class index 5 at batch index 2 is outside 0..4 \(the model has 5 classes"),
    ("loss-target-negative", lambda t: cross_entropy(torch.zeros(2, 5), torch.tensor([-1, 0])), InputError,
     r"class index -1 at batch index 0"),
    ("loss-target-shape", lambda t: check_targets(torch.zeros(4, 5), torch.zeros(4, 1, dtype=torch.long)),
     InputError, r"expected shape \(4,\) to match logits \(4, 5\), got \(4, 1\)"),
    ("loss-soft-target-shape", lambda t: cross_entropy(torch.zeros(4, 5), torch.zeros(4, 3)), InputError,
     r"soft\) targets must have the logits' shape \(4, 5\), got \(4, 3\)"),
]

FILE_CASES: list[Case] = [
    ("data-root-missing", lambda t: ModelNet40(root=t / "nope"), DataError,
     r"ModelNet data root not found: looked at .*nope \(expected one of"),
    ("data-root-empty", lambda t: ModelNet40(root=t), DataError, r"no ModelNet40 'train' split found: looked at"),
    ("h5-truncated", lambda t: (truncate(modelnet_h5(t) / "ply_data_train0.h5"), ModelNet40(root=t / "mn")),
     DataError, r"ply_data_train0.h5: not a readable HDF5 file \(corrupt or truncated\?\)"),
    ("h5-not-hdf5", lambda t: ((modelnet_h5(t) / "ply_data_train0.h5").write_text("x,y,z\n"),
                               ModelNet40(root=t / "mn")),
     DataError, r"ply_data_train0.h5: not a readable HDF5 file"),
    ("h5-wrong-keys", lambda t: ModelNet40(root=modelnet_h5(t, keys=("points", "label")), npoints=32), DataError,
     r"ply_data_train0.h5: missing field 'data' \(fields present: \['label', 'points'\]\)"),
    ("h5-label-out-of-range", lambda t: ModelNet40(root=modelnet_h5(t, label=np.array([[0], [1], [2], [40]])),
                                                   npoints=32),
     DataError, r"ply_data_train0.h5: label 40 at index 3 is outside 0..39"),
    ("h5-nan", lambda t: ModelNet40(root=modelnet_h5(t, data=np.full((4, 32, 3), np.nan, np.float32)),
                                    npoints=32),
     DataError, r"ply_data_train0.h5: shape 0 has NaN/inf coordinates \(4 bad shapes\)"),
    ("h5-data-2d", lambda t: ModelNet40(root=modelnet_h5(t, data=np.zeros((4, 32), np.float32)), npoints=32),
     DataError, r"field 'data' has shape \(4, 32\), expected \(shapes, points, 3\+\)"),
    ("h5-too-few-points", lambda t: ModelNet40(root=modelnet_h5(t), npoints=1024), DataError,
     r"ply_data_train0.h5: has 32 points, npoints=1024 requested"),
    ("h5-list-entry-missing", lambda t: ((modelnet_h5(t) / "train_files.txt").write_text("ply_data_train9.h5\n"),
                                         ModelNet40(root=t / "mn", npoints=32)),
     DataError, r"train_files.txt line 1: 'ply_data_train9.h5' -> .* does not exist"),
    ("fewshot-episode-missing", lambda t: FewShot(root=t, way=5, shot=10, fold=3), DataError,
     r"few-shot episode not found: looked for .*5way10shot/3.pkl"),
    ("fewshot-not-a-pickle", lambda t: ((t / "5way10shot").mkdir(), write(t / "5way10shot", "0.pkl", "hello"),
                                        FewShot(root=t, way=5, shot=10, fold=0)),
     DataError, r"0.pkl: not a readable pickle"),
    ("ckpt-missing", lambda t: load_pretrained(tiny(), t / "none.pth"), CheckpointError,
     r"checkpoint not found: .*none.pth"),
    ("ckpt-not-a-checkpoint", lambda t: load_pretrained(tiny(), write(t, "notes.pth", "just text\n")),
     CheckpointError, r"notes.pth: not a readable PyTorch checkpoint \(corrupt, truncated or another kind"),
    ("ckpt-truncated", lambda t: load_pretrained(tiny(), truncate(saved_checkpoint(t, tiny()))), CheckpointError,
     r"ckpt.pth: not a readable PyTorch checkpoint"),
    ("ckpt-holds-a-list", lambda t: (torch.save([1, 2, 3], t / "l.pth"), load_pretrained(tiny(), t / "l.pth")),
     CheckpointError, r"l.pth: no recognisable state dict: the file holds a list"),
    ("ckpt-no-tensors", lambda t: (torch.save({"epoch": 1, "lr": 0.1}, t / "m.pth"),
                                   load_pretrained(tiny(), t / "m.pth")),
     CheckpointError, r"m.pth: no recognisable state dict: top-level keys \['epoch', 'lr'\]"),
    ("ckpt-other-architecture", lambda t: load_pretrained(tiny(), saved_checkpoint(t, tiny_vit())),
     CheckpointError, r"ckpt.pth: shape mismatch for 3 tensor\(s\): cls_token: checkpoint \(1, 1, 192\) vs model "
     r"\(1, 1, 64\).*another architecture or width\? \(3 of its \d+ tensors share a name with the model's \d+"),
    ("ckpt-unrelated-model", lambda t: (torch.save(torch.nn.Linear(3, 4).state_dict(), t / "lin.pth"),
                                        load_pretrained(tiny(), t / "lin.pth")),
     CheckpointError, r"lin.pth: none of its 2 tensors matches a key of the model \(PointTransformer\)"),
    ("ckpt-other-width", lambda t: load_pretrained(
        tiny(), saved_checkpoint(t, build_point_transformer("point_mae_tiny", 5, trans_dim=32, encoder_dims=32))),
     CheckpointError, r"ckpt.pth: shape mismatch for \d+ tensor\(s\): .*another architecture or width"),
    ("ckpt-class-count", lambda t: load_pretrained(
        build_point_transformer("point_mae_tiny", 5), saved_checkpoint(t, build_point_transformer("point_mae_tiny", 40))),
     CheckpointError, r"class-count mismatch: model has C=5, checkpoint has C=40 .*skip_head=True"),
    ("ckpt-strict-missing", lambda t: load_pretrained(
        build_point_transformer("point_mae_tiny", 5), saved_checkpoint(t, build_point_mae_pretrain("point_mae_tiny"),
                                                                      container="base_model"), strict=True),
     CheckpointError, r"ckpt.pth: strict loading failed: \d+ missing key\(s\)"),
    ("vit-weights-not-vit", lambda t: load_vit_weights(build_vit("vit_test_tiny", num_classes=3),
                                                       saved_checkpoint(t, tiny())),
     CheckpointError, r"ckpt.pth: shape mismatch for 3 tensor\(s\): cls_token: file \(1, 1, 64\) vs model \(1, 1, 192\)"
     r".*weights of another ViT size\?"),
    ("adapter-dir-missing", lambda t: load_adapter(tiny(), t / "nope"), CheckpointError,
     r"no adapter config at .*nope/adapter_config.json"),
    ("adapter-config-malformed", _adapter_bad_json, CheckpointError,
     r"adapter_config.json: not a pointpeft adapter config"),
    ("adapter-unknown-method", _adapter_unknown_method, CheckpointError,
     r"adapter_config.json: invalid peft_config: unknown peft method 'lroa'"),
    ("adapter-other-depth", lambda t: load_adapter(build_point_transformer("point_mae_tiny", 5, depth=3),
                                                   saved_adapter(t)),
     CheckpointError, r"adapter was trained on a different base model \(depth: adapter 2 vs model 3\)"),
    ("adapter-other-classes", lambda t: load_adapter(build_point_transformer("point_mae_tiny", 7), saved_adapter(t)),
     CheckpointError, r"different base model \(num_classes: adapter 5 vs model 7\)"),
    ("adapter-other-config", _adapter_other_config, CheckpointError,
     r"adapter config does not match the model's PEFT config \(r: adapter 8 vs model 4\)"),
    ("adapter-weights-missing", _adapter_no_weights, CheckpointError, r"missing adapter weights .*adapter.safetensors"),
    ("adapter-weights-corrupt", lambda t: (write(saved_adapter(t), ADAPTER_WEIGHTS, "garbage"),
                                           load_adapter(tiny(), t / "adapter")),
     CheckpointError, r"adapter.safetensors: corrupt adapter weights"),
    ("adapter-weights-truncated", lambda t: (truncate(saved_adapter(t) / ADAPTER_WEIGHTS),
                                             load_adapter(build_point_transformer("point_mae_tiny", 5),
                                                          t / "adapter")),
     CheckpointError, r"adapter.safetensors: corrupt adapter weights"),
    ("adapter-extra-tensor", _adapter_extra_tensor, CheckpointError,
     r"adapter.safetensors: tensor 'blocks.0.attn.nonexistent' has no place in this model"),
    ("adapter-missing-tensor", _adapter_missing_tensor, CheckpointError,
     r"adapter.safetensors: adapter lacks 1 trainable tensor\(s\)"),
]

CONFIG_CASES: list[Case] = [
    ("yaml-malformed", lambda t: load_config(write(t, "bad.yaml", "model:\n  depth: [1, 2\n")), ConfigError,
     r"malformed YAML in .*bad.yaml"),
    ("yaml-tab-indent", lambda t: load_config(write(t, "tab.yaml", "model:\n\tdepth: 2\n")), ConfigError,
     r"malformed YAML in .*tab.yaml"),
    ("yaml-not-a-mapping", lambda t: load_config(write(t, "list.yaml", "- a\n- b\n")), ConfigError,
     r"list.yaml: top level must be a mapping, got list"),
    ("config-missing", lambda t: load_config(t / "none.yaml"), ConfigError, r"config file not found: .*none.yaml"),
    ("config-unknown-top-key", lambda t: load_config(write(t, "run.yaml", "modle:\n  depth: 2\n")), ConfigError,
     r"unknown top-level config key\(s\): 'modle' \(from .*run.yaml\)"),
    ("config-unknown-model-key", _config_model_key, ConfigError,
     r"run.yaml: unknown key\(s\) \['model.detph'\]; allowed in 'model'"),
    ("config-bad-model-value", _config_model_value, ConfigError,
     r"run.yaml: invalid 'model' section: trans_dim 65 must be divisible by num_heads 2"),
    ("config-base-missing", lambda t: load_config(write(t, "run.yaml", "_base_: ../nope.yaml\n")), ConfigError,
     r"run.yaml: _base_ file '../nope.yaml' not found"),
    ("config-base-cycle", _config_with_base, ConfigError, r"_base_ cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"),
    ("override-no-equals", lambda t: load_config(write(t, "run.yaml", "seed: 1\n"), ["model.depth"]), ConfigError,
     r"override 'model.depth' must look like key.sub=value"),
    ("override-through-scalar", lambda t: load_config(write(t, "run.yaml", "seed: 1\n"), ["seed.x=2"]),
     ConfigError, r"override 'seed.x=2': seed is not a mapping"),
    ("model-unknown-type", lambda t: __import__("pointpeft").build_model({"type": "point_mea"}), ConfigError,
     r"unknown model 'point_mea'; registered: .*point_mae"),
    ("model-unknown-key", lambda t: __import__("pointpeft").build_model({"type": "point_mae_tiny", "detph": 3}),
     ConfigError, r"<config>: unknown key\(s\) \['model.detph'\]; allowed in 'model'"),
    ("peft-unknown-method", lambda t: get_peft_model(build_point_transformer("point_mae_tiny"), {"type": "lroa"}),
     ConfigError, r"unknown peft method 'lroa'"),
    ("peft-unknown-key", lambda t: get_peft_model(build_point_transformer("point_mae_tiny"),
                                                  {"type": "lora", "rank": 8}),
     ConfigError, r"peft method 'lora': unknown key\(s\) \['rank'\]"),
]

SAFETY_CASES: list[Case] = [
    ("pickle-modelnet-dat", _modelnet_dat_evil, UnsafePickleError,
     r"modelnet40_train_8192pts_fps.dat: refused to load global (posix|nt|os)\.system"),
    ("pickle-fewshot-pkl", _fewshot_evil, UnsafePickleError, r"0.pkl: refused to load global (posix|nt|os)\.system"),
    ("pickle-checkpoint-pth", _pth_evil, CheckpointError,
     r"evil.pth: refused to load a pickle that needs arbitrary code \(it references (posix|nt|os)\.system\)"),
    ("pickle-as-adapter-weights", _adapter_evil_bin, CheckpointError, r"adapter.safetensors: corrupt adapter weights"),
]

ALL_CASES = [(g, *c) for g, cases in (("inputs", INPUT_CASES), ("files", FILE_CASES), ("configs", CONFIG_CASES),
                                       ("safety", SAFETY_CASES)) for c in cases]


@pytest.mark.parametrize(("group", "case_id", "builder", "exc", "pattern"),
                         [pytest.param(*c, id=f"{c[0]}:{c[1]}") for c in ALL_CASES])
def test_error_case(tmp_path: Path, group: str, case_id: str, builder: Callable[[Path], Any],
                    exc: type[BaseException], pattern: str) -> None:
    with pytest.raises(exc) as info:
        builder(tmp_path)
    assert type(info.value) is exc, f"{case_id}: raised {type(info.value).__name__}, expected exactly {exc.__name__}"
    assert isinstance(info.value, ValueError)  # every pointpeft error is also a ValueError
    assert re.search(pattern, str(info.value)), f"{case_id}: message {str(info.value)!r} !~ {pattern!r}"
    assert not (tmp_path / MARKER).exists(), f"{case_id}: the malicious pickle ran"


def test_case_ids_are_unique() -> None:
    ids = [c[1] for c in ALL_CASES]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------------------------
# inputs that must NOT fail
# ---------------------------------------------------------------------------------------------------------------
def test_float64_and_float16_clouds_give_the_float32_result() -> None:
    x = clouds()
    with torch.no_grad():
        ref = tiny()(x)
        torch.testing.assert_close(tiny()(x.double()), ref, rtol=0, atol=0)  # exact: float64 -> float32 first
        assert torch.isfinite(tiny()(x.half())).all()
        assert tiny_vit()(torch.rand(2, 3, 32, 32).double()).dtype == torch.float32


def test_duplicate_points_give_distinct_centres_and_finite_logits() -> None:
    same = torch.zeros(2, 64, 3)  # one point repeated: every FPS distance ties at 0
    base = clouds(2, 12)
    repeated = base.repeat(1, 6, 1)  # 12 distinct points, each 6 times; 16 centres needed
    for x in (same, repeated):
        idx = farthest_point_sample(x, 16)
        assert all(len(set(row.tolist())) == 16 for row in idx), idx  # distinct indices even when coords repeat
        with torch.no_grad():
            assert torch.isfinite(tiny()(x)).all()
    # where 16 distinct points exist FPS finds them all: the 12 distinct ones come first
    idx = farthest_point_sample(repeated, 16)
    assert all(sorted(row[:12].tolist()) == list(range(12)) for row in idx)
    neighborhood, center = tiny().group_divider(repeated)
    assert neighborhood.shape == (2, 16, 8, 3) and torch.isfinite(neighborhood).all()


def test_valid_labels_pass_and_loss_matches_torch() -> None:
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 4, 2, 1])
    torch.testing.assert_close(cross_entropy(logits, target), torch.nn.functional.cross_entropy(logits, target))
    soft = torch.full((4, 5), 0.2)
    torch.testing.assert_close(cross_entropy(logits, soft), torch.nn.functional.cross_entropy(logits, soft))
    assert check_labels(np.array([0.0, 4.0]), 5, "x").tolist() == [0, 4]


# ---------------------------------------------------------------------------------------------------------------
# safety: static scan of the source tree, adapters as safetensors
# ---------------------------------------------------------------------------------------------------------------
SCANNED = ("pointpeft", "tools", "tests", "benchmarks", "scripts", "datasets")


def _python_files() -> list[Path]:
    return sorted(p for d in SCANNED if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_loads(source: str, filename: str) -> list[str]:
    """Lines that load pickles unsafely: torch.load without a literal weights_only=True, np.load with
    allow_pickle=True, ``from torch import load``; in library code also pickle.load/loads/Unpickler."""
    tree = ast.parse(source, filename)
    library = "/pointpeft/" in filename.replace(os.sep, "/") and not filename.endswith("safe_pickle.py")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            if any(a.name == "load" for a in node.names):
                found.append(f"{filename}:{node.lineno}: from {node.module} import load")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("torch.load", "torch.serialization.load"):
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"{filename}:{node.lineno}: {name} without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            ap = _kw(node, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{filename}:{node.lineno}: {name} with allow_pickle other than False")
        elif library and name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
            found.append(f"{filename}:{node.lineno}: {name} in library code (use pointpeft.utils.safe_pickle)")
    return found


def test_scanner_catches_unsafe_loads() -> None:
    bad = ("import torch, pickle, numpy as np\nfrom torch import load\ntorch.load('a')\n"
           "torch.load('a', weights_only=False)\nnp.load('a', allow_pickle=True)\npickle.loads(b'')\n")
    found = unsafe_loads(bad, "/x/pointpeft/mod.py")
    assert len(found) == 5, found
    good = "import torch\ntorch.load('a', map_location='cpu', weights_only=True)\n"
    assert unsafe_loads(good, "/x/pointpeft/mod.py") == []


def test_every_torch_load_in_the_repo_is_weights_only() -> None:
    files = _python_files()
    assert len(files) > 30 and any(p.name == "pretrained.py" for p in files)  # models/pretrained.py reads checkpoints
    found = [hit for p in files for hit in unsafe_loads(p.read_text(), str(p))]
    assert not found, "unsafe loads:\n" + "\n".join(found)


def test_adapters_are_saved_as_safetensors_only(tmp_path: Path) -> None:
    from safetensors import safe_open

    directory = saved_adapter(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    raw = (directory / ADAPTER_WEIGHTS).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: u64 length + JSON header + raw tensor bytes
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]  # neither a pickle nor torch's zip
    with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(header) - {"__metadata__"} and len(keys) > 0
    meta = json.loads((directory / ADAPTER_CONFIG).read_text())
    assert meta["num_tensors"] == len(keys)
