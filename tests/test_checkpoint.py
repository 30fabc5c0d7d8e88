"""load_pretrained: every official layout gives the source model's logits; missing/unexpected keys; errors."""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pytest
import torch
from helpers.official_ckpt import (
    dapt_extra_state,
    point_bert_pretrain_state,
    point_mae_pretrain_state,
    write_finetune,
    write_point_bert_pretrain,
    write_point_mae_pretrain,
    write_state_dict,
)
from torch import nn

from pointpeft.errors import CheckpointError
from pointpeft.models import LoadReport, build_point_transformer, load_pretrained
from pointpeft.models.pretrained import extract_state_dict, group_keys

BERT_TINY = {"trans_dim": 64, "encoder_dims": 32, "depth": 2, "num_heads": 2, "num_group": 16, "group_size": 8,
             "head_hidden": 64}
HEAD = "cls_head_finetune."


def make(arch: str = "mae", num_classes: int = 10, seed: int = 0, **over) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "mae":
        m = build_point_transformer("point_mae_tiny", num_classes=num_classes, **over)
    else:
        m = build_point_transformer("point_bert", num_classes=num_classes, **{**BERT_TINY, **over})
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers must load too
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def pts() -> torch.Tensor:
    return torch.rand(3, 128, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1


def head_keys(model: nn.Module) -> set[str]:
    return {k for k in model.state_dict() if k.startswith(HEAD)}


def copy_(dst: nn.Module, src: nn.Module, keys: set[str]) -> None:
    sd = src.state_dict()
    dst.load_state_dict({k: sd[k] for k in keys}, strict=False)


def assert_same_logits(a: nn.Module, b: nn.Module, pts: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(pts), b(pts), rtol=0, atol=0)


@pytest.fixture
def log_records(caplog):
    lg = logging.getLogger("pointpeft.models.pretrained")
    lg.addHandler(caplog.handler)
    old = lg.level
    lg.setLevel(logging.INFO)
    yield caplog
    lg.removeHandler(caplog.handler)
    lg.setLevel(old)


# -- each official layout -----------------------------------------------------------------------------------------
def test_point_mae_pretrain(tmp_path, pts, log_records) -> None:
    src, dst = make(seed=0), make(seed=1)
    path = tmp_path / "pretrain.pth"
    stored = write_point_mae_pretrain(src, path)
    assert "module.MAE_encoder.blocks.blocks.0.attn.qkv.weight" in stored
    assert {"module.MAE_decoder.blocks.0.norm1.weight", "module.mask_token", "module.increase_dim.0.weight"} <= set(
        stored)
    copy_(dst, src, {"cls_token", "cls_pos"} | head_keys(src))  # pretraining has neither CLS nor head
    rep = load_pretrained(dst, path)
    assert isinstance(rep, LoadReport) and rep.source_format == "point_mae_pretrain" and rep.path == str(path)
    assert set(rep.missing_keys) == {"cls_token", "cls_pos"} | head_keys(src)
    decoder = {k for k in point_mae_pretrain_state(src) if not k.startswith("MAE_encoder.")}
    assert set(rep.unexpected_keys) == decoder
    assert "MAE_decoder.blocks.0.norm1.weight" in rep.unexpected_keys and "mask_token" in rep.unexpected_keys
    assert_same_logits(src, dst, pts)
    text = log_records.text
    assert "missing_keys" in text and "cls_head_finetune.8.{weight, bias}" in text
    assert "pretraining-only tensors unused (MAE_decoder, decoder_pos_embed, increase_dim, mask_token)" in text


def test_point_bert_pretrain(tmp_path, pts) -> None:
    src, dst = make("bert", seed=0), make("bert", seed=1)
    path = tmp_path / "Point-BERT.pth"
    stored = write_point_bert_pretrain(src, path)
    assert "module.transformer_q.reduce_dim.weight" in stored and "module.transformer_k.cls_token" in stored
    copy_(dst, src, head_keys(src))
    rep = load_pretrained(dst, path)
    assert rep.source_format == "point_bert_pretrain"
    assert set(rep.missing_keys) == head_keys(src)  # CLS and reduce_dim come from transformer_q
    unexpected = set(rep.unexpected_keys)
    assert "transformer_q.cls_head.0.weight" in unexpected  # MoCo projection, not a classifier
    assert {"lm_head.weight", "mask_token", "dvae.codebook", "queue"} <= unexpected
    assert {k for k in unexpected if k.startswith("transformer_k.")} == {
        f"transformer_k.{k[len('transformer_q.'):]}" for k in point_bert_pretrain_state(src)
        if k.startswith("transformer_q.")}
    assert_same_logits(src, dst, pts)


@pytest.mark.parametrize("layout", ["finetune", "finetune_dp", "dapt", "model", "state_dict", "plain", "plain_dp"])
def test_finetune_and_state_dict_layouts(tmp_path, pts, layout: str) -> None:
    src, dst = make(seed=0), make(seed=1)
    path = tmp_path / f"{layout}.pth"
    extras = dapt_extra_state(src) if layout == "dapt" else {}
    if layout.startswith("finetune") or layout == "dapt":
        write_finetune(src, path, extras=extras, dataparallel=layout.endswith("_dp"))
        fmt = "finetune"
    else:
        write_state_dict(src, path, key=None if layout.startswith("plain") else layout,
                         dataparallel=layout.endswith("_dp"))
        fmt = "plain" if layout.startswith("plain") else layout
    rep = load_pretrained(dst, path, strict=not extras)
    assert rep.source_format == fmt
    assert rep.missing_keys == []
    assert set(rep.unexpected_keys) == set(extras)
    assert len(rep.loaded_keys) == len(src.state_dict())
    assert_same_logits(src, dst, pts)


def test_numpy_metrics_and_dataparallel_target(tmp_path, pts) -> None:
    src, dst = make(seed=0), make(seed=1)
    path = tmp_path / "np.pth"
    torch.save({"base_model": src.state_dict(), "metrics": {"acc": np.float64(93.2), "hist": np.arange(3)}}, path)
    rep = load_pretrained(nn.DataParallel(dst), path)  # a wrapper with .module: loads into the inner model
    assert rep.missing_keys == [] and rep.unexpected_keys == []
    assert_same_logits(src, dst, pts)


def test_extract_state_dict_and_group_keys() -> None:
    sd = {"a.weight": torch.ones(1)}
    assert extract_state_dict({"model": sd, "epoch": 1})[1] == "model"
    assert extract_state_dict({"state_dict": sd})[1] == "state_dict"
    assert extract_state_dict(sd)[1] == "plain"
    assert extract_state_dict({"base_model": sd, "model": {"x": torch.ones(1)}})[1] == "base_model"
    lines = group_keys(["h.8.weight", "h.8.bias", "cls_token"]).splitlines()
    assert lines == ["  h.8.{weight, bias}", "  cls_token"]


# -- head handling ------------------------------------------------------------------------------------------------
def test_class_count_mismatch_and_skip_head(tmp_path, pts) -> None:
    src = make(num_classes=40, seed=0)
    path = tmp_path / "mn40.pth"
    write_finetune(src, path)
    dst = make(num_classes=15, seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"mn40\.pth: class-count mismatch: model has C=15, checkpoint has C=40"):
        load_pretrained(dst, path)
    for k, v in dst.state_dict().items():  # nothing was copied
        assert torch.equal(v, before[k]), k

    rep = load_pretrained(dst, path, skip_head=True)
    assert set(rep.skipped_keys) == head_keys(src) and rep.missing_keys == [] and rep.unexpected_keys == []
    for k in head_keys(dst):
        assert torch.equal(dst.state_dict()[k], before[k]), k
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(pts), src.forward_features(pts), rtol=0, atol=0)


def test_head_of_another_width_needs_skip_head(tmp_path) -> None:
    src = make(seed=0)
    sd = src.state_dict()
    sd["cls_head_finetune.0.weight"] = torch.zeros(64, 3 * 64)  # DAPT pools 3 tokens: a wider head input
    path = tmp_path / "dapt_head.pth"
    torch.save({"base_model": sd}, path)
    with pytest.raises(CheckpointError, match=r"cls_head_finetune\.0\.weight: checkpoint \(64, 192\) vs model "
                                              r"\(64, 128\); pass skip_head=True"):
        load_pretrained(make(seed=1), path)
    assert load_pretrained(make(seed=1), path, skip_head=True).missing_keys == []


def test_strict(tmp_path) -> None:
    src, dst = make(seed=0), make(seed=1)
    path = tmp_path / "pretrain.pth"
    write_point_mae_pretrain(src, path)
    before = dst.state_dict()["blocks.blocks.0.attn.qkv.weight"].clone()
    n_missing = 2 + len(head_keys(dst))  # CLS token and position, the head
    with pytest.raises(CheckpointError, match=rf"pretrain\.pth: strict loading failed: {n_missing} missing key\(s\) "
                                              r"\['cls_token', 'cls_pos'"):
        load_pretrained(dst, path, strict=True)
    assert torch.equal(dst.state_dict()["blocks.blocks.0.attn.qkv.weight"], before)


# -- errors -------------------------------------------------------------------------------------------------------
def test_file_errors(tmp_path) -> None:
    model = make()
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pth"):
        load_pretrained(model, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_pretrained(model, tmp_path)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a readable PyTorch checkpoint"):
        load_pretrained(model, text)
    good = tmp_path / "good.pth"
    write_state_dict(model, good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pth: not a readable PyTorch checkpoint"):
        load_pretrained(model, trunc)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: not a readable"):
        load_pretrained(model, empty)


class _Trap:
    """Pickles to a call of os.mkdir: loading it with code execution would create the marker folder."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_unsafe_pickle_is_refused_and_nothing_runs(tmp_path) -> None:
    model = make()
    ns = tmp_path / "ns.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1e-3)}, ns)
    with pytest.raises(CheckpointError, match=r"ns\.pth: refused to load a pickle .*argparse\.Namespace"):
        load_pretrained(model, ns)
    marker = tmp_path / "was_executed"
    trap = tmp_path / "trap.pth"
    torch.save({"model": model.state_dict(), "x": _Trap(str(marker))}, trap)
    with pytest.raises(CheckpointError, match=r"trap\.pth: refused .*weights_only=True and executed nothing"):
        load_pretrained(model, trap)
    assert not marker.exists()


def test_no_state_dict(tmp_path) -> None:
    model = make()
    p = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "acc": 91.0}, p)
    with pytest.raises(CheckpointError, match=r"meta\.pth: no recognisable state dict: top-level keys \['acc', "
                                              r"'epoch'\]"):
        load_pretrained(model, p)
    p2 = tmp_path / "list.pth"
    torch.save([torch.ones(1)], p2)
    with pytest.raises(CheckpointError, match=r"list\.pth: no recognisable state dict: the file holds a list"):
        load_pretrained(model, p2)


def test_shape_mismatch_names_key_and_shapes(tmp_path) -> None:
    src = make(seed=0)
    sd = src.state_dict()
    sd["blocks.blocks.1.mlp.fc1.weight"] = torch.zeros(10, 64)
    p = tmp_path / "bad_shape.pth"
    torch.save({"model": sd}, p)
    with pytest.raises(CheckpointError, match=r"bad_shape\.pth: shape mismatch for 1 tensor\(s\): "
                                              r"blocks\.blocks\.1\.mlp\.fc1\.weight: checkpoint \(10, 64\) vs "
                                              r"model \(256, 64\)"):
        load_pretrained(make(seed=1), p)


def test_other_architecture(tmp_path) -> None:
    p = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, p)
    with pytest.raises(CheckpointError, match=r"resnet\.pth: none of its 2 tensors matches .*another architecture"):
        load_pretrained(make(), p)
    # same names, other width: every block tensor mismatches
    wide = tmp_path / "wide.pth"
    write_finetune(make(trans_dim=32, encoder_dims=32), wide)
    with pytest.raises(CheckpointError, match=r"wide\.pth: shape mismatch .*another architecture or width"):
        load_pretrained(make(), wide)


def test_layout_writers_use_the_released_names() -> None:
    """The tiny-model writers above take their tensors from our model's state dict; their names must still be the
    released files' (tests/fixtures/*.keys, written from the official architectures), or a renamed key in our
    model would pass every logits test here. Shapes differ (tiny widths): tests/test_official_layouts.py pins
    them at full size."""
    import re

    from helpers.official_keys import read_keys

    def names(keys) -> set[str]:  # block indices folded: the tiny models have 2 blocks, the released 12
        return {re.sub(r"(blocks\.)\d+\.", r"\1*.", k) for k in keys}

    mae, bert = make(), make("bert")
    assert names(point_mae_pretrain_state(mae)) == names(read_keys("point_mae_pretrain"))
    assert names(mae.state_dict()) == names(read_keys("point_mae_finetune_modelnet40"))
    extra = names(point_bert_pretrain_state(bert)) - names(read_keys("point_bert_pretrain"))
    assert not extra, sorted(extra)
