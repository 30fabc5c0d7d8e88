"""PointGST: spectral adapters over the patch centres' graph (jerryfeng2003/PointGST, models/PGST.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_cases import build_backbone, eval_logits, make_batch, single_thread, train_steps  # noqa: F401
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.models.point_transformer import build_point_transformer
from pointpeft.peft import get_peft_model, load_adapter, save_adapter
from pointpeft.peft.pointgst import SpectralAdapter, SpectralBasisCache

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = {"type": "pointgst", "local": 8}  # the tiny backbone has 16 patches


def _released_pcsa_params(d: int = 384, r: int = 36) -> int:
    """PCSA's parameters from the released module shapes: LayerNorm(r) x2, down, up, adapt1 (shared)."""
    return 2 * 2 * r + (d * r + r) + (r * d + d) + (r * r + r)


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_count_on_point_mae_matches_the_released_model() -> None:
    for classes, groups, head in ((40, 64, 273_960), (15, 128, 267_535)):
        model = get_peft_model(build_point_transformer("point_mae", num_classes=classes, num_group=groups),
                               {"type": "pointgst"})
        expected = 12 * _released_pcsa_params() + 768 + head
        assert _trainable(model) == expected
        assert round(expected / 1e6, 1) == 0.6  # the paper's "0.6M"
    assert 12 * _released_pcsa_params() == 354_528


def test_only_adapters_head_and_cls_train_and_output_starts_unchanged() -> None:
    base = build_backbone("point")
    model = get_peft_model(copy.deepcopy(base), TINY)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("cls_token", "cls_pos", "cls_head_finetune.")) or ".peft_spectral_adapter." in n
               for n in trained)
    assert sum(".peft_spectral_adapter." in n for n in trained) == 2 * 10  # 2 blocks x (5 linears/norms x 2)
    x, y = make_batch("point")
    torch.testing.assert_close(eval_logits(model, x), eval_logits(base, x), rtol=0, atol=1e-6)
    train_steps(model, x, y, steps=2)
    assert not torch.allclose(eval_logits(model, x), eval_logits(base, x))


def _adapter(model: nn.Module) -> SpectralAdapter:
    return model.blocks.blocks[0].peft_spectral_adapter


def test_adapter_is_silu_plus_twice_h_on_patches_while_the_spectral_linear_is_zero() -> None:
    """f(z) = z + silu(spectral(LN(z))) with spectral = 0: each branch returns h, so patch rows are silu(h) + 2h."""
    model = get_peft_model(build_backbone("point"), TINY).eval()
    x = make_batch("point")[0]
    model(x)  # builds the bases
    ad = _adapter(model)
    with torch.no_grad():
        ad.up.weight.normal_(0, 0.1)  # a non-zero read-out, so the comparison sees the hidden rows
    tokens = torch.randn(x.shape[0], 1 + 16 + 2, 64)
    h = ad.down(tokens)
    expected = torch.cat([nn.functional.silu(h[:, :1]), nn.functional.silu(h[:, 1:17]) + 2 * h[:, 1:17],
                          nn.functional.silu(h[:, 17:])], dim=1)
    torch.testing.assert_close(ad(tokens), ad.up(expected) * ad.scale, rtol=1e-5, atol=1e-6)


def _with_spectral_weights(cfg: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = get_peft_model(build_backbone("point"), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".peft_spectral_adapter." in name:
                p.normal_(0, 0.3)
    return model.eval()


def test_released_and_textbook_transforms_differ_once_trained() -> None:
    x = make_batch("point")[0]
    released = _with_spectral_weights(TINY)
    textbook = _with_spectral_weights({**TINY, "transform": "textbook"})
    assert not torch.allclose(released(x), textbook(x), atol=1e-4)
    # the released forward transform is U @ x (its code comments that the textbook one is U^T @ x)
    ad = _adapter(released)
    u = torch.linalg.qr(torch.randn(2, 5, 5))[0]
    v = torch.randn(2, 5, 3)
    torch.testing.assert_close(ad._to_spectral(u, v), u @ v)
    torch.testing.assert_close(ad._from_spectral(u, ad._to_spectral(u, v)), v, rtol=1e-5, atol=1e-5)


def test_batch_distance_scale_makes_a_cloud_depend_on_its_batch_and_cloud_scale_does_not() -> None:
    x = make_batch("point")[0]
    other = x.clone()
    other[1:] *= 0.3
    batch = _with_spectral_weights(TINY)
    assert not torch.allclose(batch(x)[0], batch(other)[0], atol=1e-5)
    per_cloud = _with_spectral_weights({**TINY, "distance_scale": "cloud"})
    torch.testing.assert_close(per_cloud(x)[0], per_cloud(other)[0], rtol=1e-5, atol=1e-5)


def test_adapter_output_is_added_to_the_block_output_outside_drop_path() -> None:
    """The released Block adds t after ``x + drop_path(mlp(norm2(x)))``: with the MLP zeroed, the block returns
    x + attn + t exactly, whatever drop path does."""
    model = _with_spectral_weights(TINY)
    block = model.blocks.blocks[1]
    with torch.no_grad():
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    x = make_batch("point")[0]
    seen = {}
    block.register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0]))
    block.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    model(x)
    ad = block.peft_spectral_adapter
    with torch.no_grad():
        mid = seen["in"] + block.attn(block.norm1(seen["in"]))
        torch.testing.assert_close(seen["out"], mid + ad(mid), rtol=1e-5, atol=1e-6)


def test_bases_are_built_once_per_forward_and_shared() -> None:
    model = get_peft_model(build_backbone("point"), TINY).eval()
    caches = {id(b.peft_spectral_adapter.bases) for b in model.blocks.blocks}
    assert len(caches) == 1
    cache: SpectralBasisCache = model.blocks.blocks[0].peft_spectral_adapter.bases
    x = make_batch("point")[0]
    model(x)
    bases = cache.current()
    assert bases.global_basis.shape == (4, 16, 16) and bases.local_bases.shape == (4, 2, 8, 8)
    model(x)
    assert cache.current() is not bases  # rebuilt from the new forward's centres


def test_save_load_round_trip(tmp_path) -> None:
    model = get_peft_model(build_backbone("point"), TINY)
    x, y = make_batch("point")
    train_steps(model, x, y, steps=2)
    save_adapter(model, tmp_path)
    fresh = load_adapter(build_backbone("point"), tmp_path)
    torch.testing.assert_close(eval_logits(fresh, x), eval_logits(model, x), rtol=0, atol=1e-6)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"local \(32\) must divide"):
        get_peft_model(build_backbone("point"), {"type": "pointgst"})
    with pytest.raises(ConfigError, match="pointgst.*3D patch centres"):
        get_peft_model(build_backbone("vit"), TINY)
    with pytest.raises(ConfigError, match="transform must be"):
        get_peft_model(build_backbone("point"), {**TINY, "transform": "fourier"})
    with pytest.raises(ConfigError, match="distance_scale must be"):
        get_peft_model(build_backbone("point"), {**TINY, "distance_scale": "global"})
