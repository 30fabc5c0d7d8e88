import pytest
import torch

from pointpeft.errors import ConfigError, InputError
from pointpeft.models import build_point_transformer
from pointpeft.registry import MODELS


def test_point_mae_matches_official_layout():
    m = build_point_transformer("point_mae", num_classes=40)
    sd = m.state_dict()
    assert len(sd) == 174
    assert sum(p.numel() for p in m.parameters()) == 22_099_752
    assert sd["blocks.blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert "blocks.blocks.0.attn.qkv.bias" not in sd
    assert sd["encoder.first_conv.0.weight"].shape == (128, 3, 1)
    assert sd["encoder.second_conv.3.weight"].shape == (384, 512, 1)
    assert sd["cls_head_finetune.8.weight"].shape == (40, 256)
    assert sd["cls_pos"].shape == (1, 1, 384)


def test_point_bert_layout():
    sd = build_point_transformer("point_bert", num_classes=40).state_dict()
    assert sd["reduce_dim.weight"].shape == (384, 256)
    assert sd["encoder.second_conv.3.weight"].shape == (256, 512, 1)
    assert sd["cls_head_finetune.3.weight"].shape == (40, 256)


@pytest.mark.parametrize("name", ["point_mae_tiny", "point_mae_small", "point_bert_small"])
def test_forward_shapes(name):
    torch.manual_seed(0)
    m = MODELS.build({"type": name, "num_classes": 7}).eval()
    x = torch.rand(3, 300, 3)
    out = m(x)
    assert out.shape == (3, 7)
    feats = m.forward_features(x)
    assert feats.shape == (3, 1 + m.num_patch_tokens, m.trans_dim)
    assert torch.allclose(m.forward_head(feats), out, atol=1e-5)


def test_encoder_gemm_matches_conv1d():
    torch.manual_seed(0)
    m = build_point_transformer("point_mae_tiny", num_classes=3).eval()
    enc = m.encoder
    g = torch.randn(2, 5, 8, 3)
    x = g.reshape(10, 8, 3).transpose(2, 1)
    f = enc.first_conv(x)
    f = torch.cat([f.max(2, keepdim=True).values.expand(-1, -1, 8), f], 1)
    ref = enc.second_conv(f).max(2).values.reshape(2, 5, -1)
    assert torch.allclose(enc(g), ref, atol=1e-5)


@pytest.mark.parametrize(
    "x, msg",
    [
        (torch.rand(2, 10, 3), "at least 16"),
        (torch.rand(2, 100), r"\(B, N, 3\)"),
        (torch.rand(2, 100, 6), r"\(B, N, 3\)"),
        (torch.randint(0, 5, (2, 100, 3)), "float"),
        (torch.rand(0, 100, 3), "empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, msg):
    m = build_point_transformer("point_mae_tiny", num_classes=3)
    with pytest.raises(InputError, match=msg):
        m(x)


def test_nan_input_names_cloud_and_point():
    m = build_point_transformer("point_mae_tiny", num_classes=3)
    x = torch.rand(2, 64, 3)
    x[1, 7, 2] = float("nan")
    with pytest.raises(InputError, match="cloud 1, point 7"):
        m(x)


def test_unknown_arch_and_field():
    with pytest.raises(ConfigError, match="unknown point transformer"):
        build_point_transformer("point_mea")
    with pytest.raises(ConfigError, match="depht"):
        build_point_transformer("point_mae", depht=3)


def test_tokenizer_frozen_runs_without_grad():
    m = build_point_transformer("point_mae_tiny", num_classes=3)
    for p in [*m.encoder.parameters(), *m.pos_embed.parameters()]:
        p.requires_grad_(False)
    tokens, _, pos = m.tokenize(torch.rand(2, 64, 3))
    assert not tokens.requires_grad and not pos.requires_grad
    m.cls_token.requires_grad_(True)
    m(torch.rand(2, 64, 3)).sum().backward()
    assert m.cls_token.grad is not None


def test_warm_start_batchnorm_statistics_start_from_the_data():
    """Fresh BatchNorms take the first batch's statistics (not mean 0 / var 1), then average exponentially; a
    trained one (large num_batches_tracked) updates exactly like nn.BatchNorm1d."""
    from pointpeft.models.batchnorm import WarmStartBatchNorm1d, warm_start_momentum

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g) * 1e-3 + 0.5  # tiny-variance features, like Point-MAE's patch features
    bn = WarmStartBatchNorm1d(8).train()
    bn(x)
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    torch.testing.assert_close(bn.running_var, x.var(0))  # unbiased, as nn.BatchNorm1d stores it
    with torch.no_grad():
        batch_stats = torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        torch.testing.assert_close(bn.eval()(x), batch_stats, atol=1e-2, rtol=0)  # eval = what training saw
    assert warm_start_momentum(bn) == pytest.approx(0.1 / (1 - 0.9**2))
    ref, ours = torch.nn.BatchNorm1d(8), WarmStartBatchNorm1d(8)
    for m in (ref, ours):
        m.num_batches_tracked.fill_(10_000)
        m.train()(x)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_head_init_follows_the_originals():
    """Point-MAE/DAPT/IDPT fine-tune from a checkpoint without their trunc-normal init, so the head keeps PyTorch's
    layer init (kaiming-uniform weights, non-zero biases); ``head_init: trunc_normal`` is the from-scratch rule."""
    import torch

    from pointpeft.models import build_point_transformer

    torch.manual_seed(0)
    default = build_point_transformer("point_mae_tiny", num_classes=5)
    torch.manual_seed(0)
    trunc = build_point_transformer("point_mae_tiny", num_classes=5, head_init="trunc_normal")
    first = default.cls_head_finetune[0]
    fan_in = first.weight.shape[1]
    assert first.bias.abs().max() > 0  # PyTorch's uniform bias, not zero
    assert first.weight.abs().max() <= 1 / fan_in**0.5 + 1e-6  # kaiming-uniform bound
    assert trunc.cls_head_finetune[0].bias.abs().max() == 0
    assert float(trunc.cls_head_finetune[0].weight.detach().std()) < 0.03
    # the backbone's own layers get trunc-normal 0.02 either way
    assert torch.equal(default.blocks.blocks[0].mlp.fc1.bias, torch.zeros_like(default.blocks.blocks[0].mlp.fc1.bias))
    # a fresh head (another pooling width) follows the same rule
    assert default.set_pool(["cls", "patch_max", "patch_mean"])
    assert default.cls_head_finetune[0].bias.abs().max() > 0
    assert trunc.set_pool(["cls", "patch_max", "patch_mean"])
    assert trunc.cls_head_finetune[0].bias.abs().max() == 0
    import pytest

    with pytest.raises(ValueError, match="head_init"):
        build_point_transformer("point_mae_tiny", num_classes=5, head_init="zeros")
