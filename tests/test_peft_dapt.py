"""DAPT: dynamic adapter with per-token scale, SSF, internal prompts appended and kept out of pooling; DAPT-X."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft_cases import (
    BACKBONES,
    build_backbone,
    eval_logits,
    make_batch,
    single_thread,  # noqa: F401  (fixture)
    train_steps,
)

from pointpeft.errors import ConfigError
from pointpeft.peft import describe_backbone, get_peft_model
from pointpeft.peft.adapterx import SMoABlock
from pointpeft.peft.dapt import DynamicAdapter, Ssf

pytestmark = pytest.mark.usefixtures("single_thread")


def _block_input_lengths(model: torch.nn.Module) -> list[int]:
    spec = describe_backbone(model)
    seen: list[int] = []
    for block in spec.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    return seen


@pytest.mark.parametrize("kind", BACKBONES)
def test_internal_prompts_accumulate_and_never_reach_pooling(kind: str) -> None:
    model = get_peft_model(build_backbone(kind), "dapt")
    spec = describe_backbone(model)
    inputs, _ = make_batch(kind)
    lengths = _block_input_lengths(model)
    final_in: list[torch.Tensor] = []
    spec.final_norm.register_forward_pre_hook(lambda m, args: final_in.append(args[0]))
    eval_logits(model, inputs)
    base_tokens = lengths[0]
    assert lengths == [base_tokens + i for i in range(spec.depth)]  # block i sees the prompts of blocks 0..i-1
    assert final_in[0].shape[1] == base_tokens  # prompts stripped before the final norm / pooling / head
    assert spec.blocks[-1].mlp.peft_adapter.prompt_generator is None  # the last block's prompt would be unused


def test_prompt_is_ssf_of_mean_gelu_adapter_output() -> None:
    model = get_peft_model(build_backbone("point"), "dapt")
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=2)  # adapters and prompt scale/shift leave their initial values
    spec = describe_backbone(model)
    adapter: DynamicAdapter = spec.blocks[0].mlp.peft_adapter
    outs, block1_in = [], []
    adapter.register_forward_hook(lambda m, a, o: outs.append(o))
    spec.blocks[1].register_forward_pre_hook(lambda m, a: block1_in.append(a[0]))
    eval_logits(model, inputs)
    pg = adapter.prompt_generator
    expected = pg.gamma * F.gelu(outs[0]).mean(dim=1) + pg.beta
    assert expected.abs().max() > 0
    # block 1 gets block 0's output + the position embedding (zero for appended tokens)
    torch.testing.assert_close(block1_in[0][:, -1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", BACKBONES)
def test_without_prompts_output_unchanged_at_init_and_ssf_is_live(kind: str) -> None:
    base = build_backbone(kind)
    model = get_peft_model(copy.deepcopy(base), {"type": "dapt", "prompt": False})
    inputs, _ = make_batch(kind)
    torch.testing.assert_close(eval_logits(model, inputs), eval_logits(base, inputs), rtol=0, atol=1e-6)
    ssfs = [m for m in model.modules() if isinstance(m, Ssf)]
    assert len(ssfs) == 6 * describe_backbone(model).depth + 1  # 6 per block + after the final norm
    with torch.no_grad():
        describe_backbone(model).blocks[0].attn.qkv.peft_ssf.gamma.mul_(1.5)
    assert not torch.allclose(eval_logits(model, inputs), eval_logits(base, inputs), atol=1e-4)


def test_dynamic_scale_is_per_token_and_relu() -> None:
    torch.manual_seed(0)
    ad = DynamicAdapter(16, 4)
    torch.nn.init.normal_(ad.up.weight)
    x = torch.randn(2, 5, 16)
    z = ad.norm(x)
    s = F.relu(ad.scale(z))
    assert (s == 0).any() and (s > 0).any()  # some tokens switched off, others scaled
    expected = ad.up(F.gelu(ad.down(z))) * s
    torch.testing.assert_close(ad(x), expected)
    with torch.no_grad():
        ad.scale.weight.zero_()
        ad.scale.bias.fill_(-1.0)
    assert ad(x).abs().max() == 0


def test_dapt_x_uses_the_shared_smoa_without_ssf() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "dapt", "x_mode": True})
    handles = [m for m in model.modules() if isinstance(m, SMoABlock)]
    assert len(handles) == describe_backbone(model).depth
    assert not any(isinstance(m, (DynamicAdapter, Ssf)) for m in model.modules())
    assert all(h.prompt_generator.gelu for h in handles[:-1])  # DAPT's GELU before the mean
    ax = get_peft_model(build_backbone("point"), "adapterx")
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == sum(p.numel() for p in ax.parameters() if p.requires_grad)
    with_ssf = get_peft_model(build_backbone("point"), {"type": "dapt", "x_mode": True, "ssf": True})
    assert sum(isinstance(m, Ssf) for m in with_ssf.modules()) > 0


@pytest.mark.parametrize(("node", "field"), [({"r": 0}, "r"), ({"ssf": "yes"}, "ssf"), ({"dropout": 1.0}, "dropout"),
                                             ({"x": {"num_experts": 2}}, "x_mode"),
                                             ({"x_mode": True, "x": {"bogus": 1}}, "x.bogus")])
def test_bad_config_names_the_field(node: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        get_peft_model(build_backbone("point"), {"type": "dapt", **node})
