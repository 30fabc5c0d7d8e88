"""Adapter (sequential after the FFN) and AdaptFormer (parallel, scaled): placement, init, options."""

from __future__ import annotations

import pytest
import torch
from peft_cases import build_backbone, single_thread, tiny_point  # noqa: F401  (fixture)

from pointpeft.errors import ConfigError
from pointpeft.peft import get_peft_model, trainable_parameter_report
from pointpeft.peft.adapter import Bottleneck

pytestmark = pytest.mark.usefixtures("single_thread")


def _randomise(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _ffn(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.fc2(mlp.act(mlp.fc1(x)))


def test_adapter_is_sequential_after_the_ffn() -> None:
    model = get_peft_model(tiny_point(), {"type": "adapter"})
    mlp = model.blocks.blocks[0].mlp
    _randomise(mlp.peft_adapter)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        f = _ffn(mlp, x)
        torch.testing.assert_close(mlp(x), f + mlp.peft_adapter(f))
        a = mlp.peft_adapter
        torch.testing.assert_close(a(f), a.up(torch.nn.functional.gelu(a.down(f))))


def test_adaptformer_reads_the_residual_stream_and_is_scaled() -> None:
    """ShoufaChen/AdaptFormer: ``adapt_x = adaptmlp(x)`` on the post-attention stream, added after the FFN."""
    model = get_peft_model(build_backbone("vit"), {"type": "adaptformer"})
    block = model.blocks[1]
    a = block.mlp.peft_adapter
    assert a.dropout.p == 0.1 and a.norm_in is None  # released: dropout 0.1, no adapter LayerNorm
    _randomise(a)
    x = torch.randn(2, 5, 192)
    block.eval()
    with torch.no_grad():
        h = x + block.ls1(block.attn(block.norm1(x)))
        torch.testing.assert_close(block(x), h + block.ls2(block.mlp(block.norm2(h))) + a(h))
        torch.testing.assert_close(a(h), 0.1 * a.up(torch.relu(a.down(h))))
    assert not a.scale.requires_grad and "scale" not in dict(a.named_parameters())


def test_adaptformer_ffn_input_option_is_parallel_on_the_normed_input() -> None:
    model = get_peft_model(build_backbone("vit"), {"type": "adaptformer", "attach": "ffn_input"})
    mlp = model.blocks[1].mlp
    a = mlp.peft_adapter
    _randomise(a)
    x = torch.randn(2, 5, 192)
    mlp.eval()  # dropout 0.1
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), _ffn(mlp, x) + a(x))


def test_parameter_count_and_zero_init() -> None:
    model = get_peft_model(build_backbone("vit"), {"type": "adapter", "r": 8})
    per_block = 192 * 8 + 8 + 8 * 192 + 192
    head_and_cls = 192 * 5 + 5 + 192
    assert trainable_parameter_report(model)["trainable"] == 2 * per_block + head_and_cls
    for m in model.modules():
        if isinstance(m, Bottleneck):
            assert m.up.weight.abs().sum() == 0 and m.up.bias.abs().sum() == 0


def test_options_layernorm_learnable_scale_dropout() -> None:
    model = get_peft_model(tiny_point(), {"type": "adaptformer", "layernorm": "in", "learnable_scale": True,
                                          "scale": 0.5, "dropout": 0.2, "r": 4})
    a = model.blocks.blocks[0].mlp.peft_adapter
    assert isinstance(a.norm_in, torch.nn.LayerNorm) and a.norm_out is None
    assert a.scale.requires_grad and a.scale.item() == pytest.approx(0.5)
    assert a.dropout.p == 0.2 and a.down.out_features == 4
    out = get_peft_model(tiny_point(), {"type": "adapter", "layernorm": "out"})
    assert isinstance(out.blocks.blocks[1].mlp.peft_adapter.norm_out, torch.nn.LayerNorm)


@pytest.mark.parametrize(("cfg", "field"), [({"r": 0}, "r"), ({"layernorm": "mid"}, "layernorm"),
                                            ({"activation": "tanh"}, "activation"), ({"dropout": 1.5}, "dropout")])
def test_bad_values_name_the_field(cfg: dict, field: str) -> None:
    for name in ("adapter", "adaptformer"):
        with pytest.raises(ConfigError, match=field):
            get_peft_model(tiny_point(), {"type": name, **cfg})


def test_adaptformer_attach_value_is_checked() -> None:
    with pytest.raises(ConfigError, match="attach"):
        get_peft_model(tiny_point(), {"type": "adaptformer", "attach": "after"})
