"""The released checkpoints' complete key lists (tests/fixtures/*.keys, written from the published architectures of
Point-MAE and Point-BERT, not from our models) against our models and loader: every name and shape of our
Point-MAE / Point-BERT matches, and files built from those lists (values random) load key for key.

Each tensor in a built file is a random vector broadcast to its official shape (stride 0), so a 78M-parameter
Point-BERT file takes kilobytes; names, shapes and dtypes are the released ones, and every tensor's values are its
own, so a value landing under another name is seen."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers.official_keys import read_keys

from pointpeft.models import build_point_transformer, load_pretrained

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def random_state(keys: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (shape, dtype) in keys.items():
        if dtype == torch.int64:
            sd[k] = torch.randint(1, 1000, shape, generator=g)
            continue
        row = torch.rand(shape[-1] if shape else 1, generator=g) + 0.5  # positive: fine for running_var too
        sd[k] = row.expand(shape) if shape else row[0].clone()
    return sd


def write_official(path: Path, sd: dict[str, torch.Tensor], dataparallel: bool) -> None:
    """The layout of Point-MAE's / Point-BERT's tools/builder.py save_checkpoint."""
    torch.save({"base_model": {("module." + k if dataparallel else k): v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 300, "metrics": {}, "best_metrics": {}}, path)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def assert_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor], mapping: dict[str, str]) -> None:
    own = model.state_dict()
    wrong = [ours for theirs, ours in mapping.items() if not torch.equal(own[ours], sd[theirs].to(own[ours].dtype))]
    assert not wrong, f"values not loaded from their official names: {wrong[:5]}"


def full_size(name: str) -> torch.nn.Module:
    """The full-size model without its truncated-normal init (10 s of a 2-core CPU for 22M values): every tensor
    checked here is loaded from the file first."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t)
        return build_point_transformer(name, num_classes=40)


@pytest.fixture(scope="module")
def point_mae() -> torch.nn.Module:
    return full_size("point_mae")


def test_fixture_counts_are_the_published_ones() -> None:
    ft = read_keys("point_mae_finetune_modelnet40")
    n_params = sum(math.prod(s) for k, (s, _) in ft.items() if not k.endswith(BUFFERS))
    assert len(ft) == 174 and n_params == 22_099_752
    assert len(read_keys("point_mae_pretrain")) == 209 and len(read_keys("point_bert_pretrain")) == 411


def test_point_mae_names_and_shapes_are_the_released_finetune_file(point_mae, tmp_path) -> None:
    keys = read_keys("point_mae_finetune_modelnet40")
    assert shapes(point_mae) == {k: s for k, (s, _) in keys.items()}
    assert list(point_mae.state_dict()) == list(keys)  # the same order too
    sd = random_state(keys, seed=1)
    write_official(tmp_path / "modelnet_1k.pth", sd, dataparallel=False)
    rep = load_pretrained(point_mae, tmp_path / "modelnet_1k.pth", strict=True)
    assert rep.source_format == "finetune" and rep.missing_keys == [] and rep.unexpected_keys == []
    assert_loaded(point_mae, sd, {k: k for k in keys})


@pytest.mark.parametrize("dataparallel", [True, False], ids=["module-prefix", "plain"])
def test_point_mae_pretrain_file_loads_every_encoder_tensor(point_mae, tmp_path, dataparallel: bool) -> None:
    keys = read_keys("point_mae_pretrain")
    sd = random_state(keys, seed=2)
    write_official(tmp_path / "pretrain.pth", sd, dataparallel)
    rep = load_pretrained(point_mae, tmp_path / "pretrain.pth")
    encoder = {k: k[len("MAE_encoder."):] for k in keys if k.startswith("MAE_encoder.")}
    head = {k for k in point_mae.state_dict() if k.startswith("cls_head_finetune.")}
    assert rep.source_format == "point_mae_pretrain"
    assert set(rep.loaded_keys) == set(encoder.values())
    assert set(rep.missing_keys) == {"cls_token", "cls_pos"} | head  # pretraining has neither
    assert set(rep.unexpected_keys) == {k for k in keys if not k.startswith("MAE_encoder.")}
    assert_loaded(point_mae, sd, encoder)


def test_point_bert_pretrain_file_loads_the_query_encoder(tmp_path) -> None:
    keys = read_keys("point_bert_pretrain")
    model = full_size("point_bert")
    q_only = ("transformer_q.mask_token", "transformer_q.lm_head.", "transformer_q.cls_head.")
    query = {k: k[len("transformer_q."):] for k in keys if k.startswith("transformer_q.") and not k.startswith(q_only)}
    backbone = {k: s for k, s in shapes(model).items() if not k.startswith("cls_head_finetune.")}
    assert backbone == {ours: keys[theirs][0] for theirs, ours in query.items()}  # names and shapes, both ways
    sd = random_state(keys, seed=3)
    write_official(tmp_path / "Point-BERT.pth", sd, dataparallel=True)
    rep = load_pretrained(model, tmp_path / "Point-BERT.pth")
    assert rep.source_format == "point_bert_pretrain"
    assert set(rep.loaded_keys) == set(query.values())
    assert set(rep.missing_keys) == {k for k in model.state_dict() if k.startswith("cls_head_finetune.")}
    assert len(rep.unexpected_keys) == len(keys) - len(query)
    assert_loaded(model, sd, query)
