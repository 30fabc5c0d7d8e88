"""ViT weights from local files: .pth / .safetensors / JAX .npz (original AugReg and big_vision layouts) give the
source model's logits; a different class count drops the head (reported); bad files raise CheckpointError."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pointpeft.errors import CheckpointError
from pointpeft.models.vit import build_vit, load_vit_weights

TINY = "vit_test_tiny"


def make(num_classes: int = 7, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_vit(TINY, num_classes=num_classes, drop_path_rate=0.0, **kw).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def source() -> nn.Module:
    """A model whose every tensor differs from a fresh init (biases and norms included)."""
    model = make(seed=1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


# -- writers of Google's JAX checkpoint layouts (inverse of timm's _n2p conversion) -----------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _block_arrays(blk: nn.Module, heads: int, big_vision: bool) -> dict[str, np.ndarray]:
    dim = blk.norm1.weight.shape[0]
    hd = dim // heads
    mha, mlp, ln2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1") if big_vision else (
        "MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    out = {"LayerNorm_0/scale": _np(blk.norm1.weight), "LayerNorm_0/bias": _np(blk.norm1.bias),
           f"{ln2}/scale": _np(blk.norm2.weight), f"{ln2}/bias": _np(blk.norm2.bias)}
    qkv_w, qkv_b = blk.attn.qkv.weight.chunk(3, 0), blk.attn.qkv.bias.chunk(3, 0)
    for name, w, b in zip(("query", "key", "value"), qkv_w, qkv_b):
        out[f"{mha}/{name}/kernel"] = _np(w.T.reshape(dim, heads, hd))
        out[f"{mha}/{name}/bias"] = _np(b.reshape(heads, hd))
    out[f"{mha}/out/kernel"] = _np(blk.attn.proj.weight.reshape(dim, heads, hd).permute(1, 2, 0))
    out[f"{mha}/out/bias"] = _np(blk.attn.proj.bias)
    for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
        out[f"{mlp}/Dense_{r}/kernel"] = _np(fc.weight.T)
        out[f"{mlp}/Dense_{r}/bias"] = _np(fc.bias)
    return out


def write_jax_npz(model: nn.Module, path: Path, layout: str = "augreg", extra: dict | None = None,
                  head: bool = True) -> Path:
    """``augreg``: the original ViT / AugReg layout (``Transformer/encoderblock_{i}``, ``posembed_input``);
    ``big_vision``: ``params/`` prefix, blocks scanned into one stacked ``Transformer/encoderblock``."""
    big = layout == "big_vision"
    heads = model.blocks[0].attn.num_heads
    arr = {"embedding/kernel": _np(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
           "embedding/bias": _np(model.patch_embed.proj.bias), "cls": _np(model.cls_token),
           "Transformer/encoder_norm/scale": _np(model.norm.weight),
           "Transformer/encoder_norm/bias": _np(model.norm.bias)}
    arr["pos_embedding" if big else "Transformer/posembed_input/pos_embedding"] = _np(model.pos_embed)
    if head:
        arr["head/kernel"] = _np(model.head.weight.T)
        arr["head/bias"] = _np(model.head.bias)
    blocks = [_block_arrays(b, heads, big) for b in model.blocks]
    if big:
        for k in blocks[0]:
            arr[f"Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
        arr = {f"params/{k}": v for k, v in arr.items()}
    else:
        for i, b in enumerate(blocks):
            arr.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
    arr.update(extra or {})
    np.savez(path, **arr)
    return path


def assert_same(a: nn.Module, b: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images), rtol=1e-5, atol=1e-5)


# -- round trips -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pth", "pth_model", "pth_module", "safetensors"])
def test_state_dict_files_round_trip(tmp_path: Path, source: nn.Module, images: torch.Tensor, fmt: str) -> None:
    sd = source.state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "pth":
        torch.save(sd, path)
    elif fmt == "pth_model":
        torch.save({"model": sd, "epoch": 3}, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = build_vit(TINY, num_classes=7, weights=str(path), drop_path_rate=0.0).eval()
    assert_same(model, source, images)
    rep = model.load_report
    assert rep.missing_keys == [] and rep.unexpected_keys == [] and rep.skipped_keys == []
    assert len(rep.loaded_keys) == len(sd)


@pytest.mark.parametrize("layout", ["augreg", "big_vision"])
def test_jax_npz_round_trip_matches_timm(tmp_path: Path, source: nn.Module, images: torch.Tensor,
                                         layout: str) -> None:
    path = write_jax_npz(source, tmp_path / "w.npz", layout)
    model = make(seed=2)
    rep = load_vit_weights(model, path)
    assert_same(model, source, images)
    assert rep.missing_keys == [] and rep.unexpected_keys == [] and rep.skipped_keys == []
    assert rep.source_format == ("big_vision_npz" if layout == "big_vision" else "jax_npz")
    ref = make(seed=3)  # timm's own loader, called directly, agrees
    ref.load_pretrained(str(path))
    assert_same(model, ref, images)


def test_npz_other_class_count_drops_head_and_reports(tmp_path: Path, source: nn.Module,
                                                      images: torch.Tensor) -> None:
    extra = {"pre_logits/kernel": np.zeros((192, 192), np.float32), "pre_logits/bias": np.zeros(192, np.float32)}
    path = write_jax_npz(source, tmp_path / "w.npz", extra=extra)
    model = make(num_classes=4, seed=4)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    rep = load_vit_weights(model, path)
    assert sorted(rep.missing_keys) == ["head.bias", "head.weight"]
    assert sorted(rep.skipped_keys) == ["head/bias", "head/kernel"]
    assert sorted(rep.unexpected_keys) == ["pre_logits/bias", "pre_logits/kernel"]
    for k, v in model.head.state_dict().items():  # the head keeps its initial values, nothing is NaN
        assert torch.equal(v, head_before[k])
    with torch.no_grad():  # the backbone loaded: same features as the source
        torch.testing.assert_close(model.forward_head(model.forward_features(images), pre_logits=True),
                                   source.forward_head(source.forward_features(images), pre_logits=True))


def test_state_dict_other_class_count_drops_head(tmp_path: Path, source: nn.Module, images: torch.Tensor) -> None:
    path = tmp_path / "w.pth"
    torch.save({**source.state_dict(), "extra.weight": torch.zeros(2)}, path)
    model = build_vit(TINY, num_classes=100, weights=path, drop_path_rate=0.0).eval()
    rep = model.load_report
    assert sorted(rep.skipped_keys) == ["head.bias", "head.weight"]
    assert sorted(rep.missing_keys) == ["head.bias", "head.weight"]
    assert rep.unexpected_keys == ["extra.weight"]
    assert model.head.out_features == 100
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), source.forward_features(images))


def test_avg_pool_model_reports_fc_norm_missing(tmp_path: Path, source: nn.Module) -> None:
    path = write_jax_npz(source, tmp_path / "w.npz")
    model = make(global_pool="avg")
    rep = load_vit_weights(model, path)
    assert {"fc_norm.weight", "fc_norm.bias"} <= set(rep.missing_keys)


def test_position_embedding_resampled_for_another_image_size(tmp_path: Path, source: nn.Module) -> None:
    torch.save(source.state_dict(), tmp_path / "w.pth")
    write_jax_npz(source, tmp_path / "w.npz")
    for name in ("w.pth", "w.npz"):
        model = build_vit(TINY, num_classes=7, img_size=48, weights=tmp_path / name)
        assert model.pos_embed.shape == (1, 1 + 36, 192)
        assert model.load_report.missing_keys == []
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 7)


def test_strict_refuses_partial_files(tmp_path: Path, source: nn.Module) -> None:
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(sd, tmp_path / "w.pth")
    model = build_vit(TINY, num_classes=7, weights=tmp_path / "w.pth")
    assert any(k.startswith("blocks.1.") for k in model.load_report.missing_keys)
    with pytest.raises(CheckpointError, match="strict loading failed.*blocks.1"):
        build_vit(TINY, num_classes=7, weights=tmp_path / "w.pth", strict=True)
    torch.save(source.state_dict(), tmp_path / "full.pth")  # only the head differs: strict still loads
    build_vit(TINY, num_classes=3, weights=tmp_path / "full.pth", strict=True)


def test_loading_opens_no_socket(tmp_path: Path, source: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jax_npz(source, tmp_path / "w.npz")
    torch.save(source.state_dict(), tmp_path / "w.pth")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("w.npz", "w.pth"):
        assert build_vit(TINY, num_classes=7, weights=tmp_path / name).load_report.missing_keys == []


# -- bad files ---------------------------------------------------------------------------------------------------
def test_missing_and_hub_like_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_vit(TINY, weights=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="never downloads"):
        build_vit(TINY, weights="timm/vit_base_patch16_224.augreg_in21k")
    with pytest.raises(CheckpointError, match="not a file"):
        build_vit(TINY, weights=tmp_path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_corrupt_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00garbage, not weights" * 10)
    with pytest.raises(CheckpointError, match=str(path.name)):
        build_vit(TINY, weights=path)


def test_truncated_npz(tmp_path: Path, source: nn.Module) -> None:
    path = write_jax_npz(source, tmp_path / "w.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="w.npz"):
        build_vit(TINY, weights=path)


def test_unknown_suffix_and_wrong_architecture(tmp_path: Path, source: nn.Module) -> None:
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown weights format"):
        build_vit(TINY, weights=tmp_path / "w.h5")
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    write_jax_npz(source, tmp_path / "tiny.npz")
    for name in ("tiny.pth", "tiny.npz"):  # ViT-Ti weights into a ViT-S: named shape mismatch
        with pytest.raises(CheckpointError, match="another ViT size"):
            build_vit("vit_test_small", weights=tmp_path / name)
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="none of its 1 tensors"):
        build_vit(TINY, weights=tmp_path / "other.pth")


def test_npz_with_fewer_blocks_names_the_missing_key(tmp_path: Path, source: nn.Module) -> None:
    path = write_jax_npz(source, tmp_path / "w.npz")
    model = build_vit(TINY, depth=3, num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="encoderblock_2"):
        load_vit_weights(model, path)
    for k, v in model.state_dict().items():  # the model is left as it was
        assert torch.equal(v, before[k])


def test_nan_weights_refused(tmp_path: Path, source: nn.Module) -> None:
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    sd["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        build_vit(TINY, num_classes=7, weights=tmp_path / "w.pth")
