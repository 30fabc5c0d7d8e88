"""LoRA: targets by name, B zero-init, alpha/r scaling, exact merge that removes the branches."""

from __future__ import annotations

import pytest
import torch
from peft_cases import build_backbone, eval_logits, make_batch, single_thread, tiny_point  # noqa: F401

from pointpeft.errors import ConfigError
from pointpeft.peft import describe_backbone, get_peft_model, merge, trainable_parameter_report
from pointpeft.peft.lora import LoraBranch, target_linears

pytestmark = pytest.mark.usefixtures("single_thread")


def _branches(model: torch.nn.Module) -> dict[str, LoraBranch]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraBranch)}


def test_default_targets_qkv_only_with_zero_b() -> None:
    model = get_peft_model(tiny_point(), {"type": "lora"})
    names = sorted(_branches(model))
    assert names == ["blocks.blocks.0.attn.qkv.peft_adapter", "blocks.blocks.1.attn.qkv.peft_adapter"]
    for b in _branches(model).values():
        assert b.lora_B.abs().sum() == 0 and b.lora_A.abs().sum() > 0
        assert b.scaling == pytest.approx(16 / 8)
    per_layer = 8 * (64 + 3 * 64)
    head_cls = sum(p.numel() for p in model.cls_head_finetune.parameters()) + 2 * 64
    assert trainable_parameter_report(model)["trainable"] == 2 * per_layer + head_cls


def test_other_targets_by_name_on_vit() -> None:
    model = get_peft_model(build_backbone("vit"), {"type": "lora", "target_modules": ["proj", "fc1", "fc2"]})
    names = {n.rsplit(".", 2)[-2] for n in _branches(model)}
    assert names == {"proj", "fc1", "fc2"} and len(_branches(model)) == 6


def test_branch_computes_scaled_low_rank_update() -> None:
    model = get_peft_model(tiny_point(), {"type": "lora", "r": 4, "alpha": 12})
    qkv = model.blocks.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.peft_adapter.lora_B.normal_()
        x = torch.randn(3, 64)
        expected = torch.nn.functional.linear(x, qkv.weight, qkv.bias) + 3.0 * x @ (
            qkv.peft_adapter.lora_B @ qkv.peft_adapter.lora_A).t()
        torch.testing.assert_close(qkv(x), expected)


def test_merge_folds_weights_and_removes_hooks() -> None:
    model = get_peft_model(build_backbone("vit"), {"type": "lora"})
    inputs, _ = make_batch("vit")
    qkv = model.blocks[0].attn.qkv
    w0 = qkv.weight.detach().clone()
    with torch.no_grad():
        for b in _branches(model).values():
            b.lora_B.normal_(std=0.05)
        delta = qkv.peft_adapter.delta_weight()
    before = eval_logits(model, inputs)
    merge(model)
    torch.testing.assert_close(qkv.weight, w0 + delta)
    assert not _branches(model) and not qkv._forward_hooks and not qkv.weight.requires_grad
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="merged already"):
        merge(model)


def test_bad_targets_raise() -> None:
    with pytest.raises(ConfigError, match="attn"):
        get_peft_model(tiny_point(), {"type": "lora", "target_modules": ["attn"]})
    with pytest.raises(ConfigError, match="match no nn.Linear"):
        target_linears(describe_backbone(tiny_point()), ["q_proj"])
    with pytest.raises(ConfigError, match="r must be"):
        get_peft_model(tiny_point(), {"type": "lora", "r": 0})


def test_init_is_loralib_kaiming_uniform() -> None:
    """microsoft/LoRA ``loralib/layers.py``: A kaiming_uniform_(a=sqrt(5)) (bound 1/sqrt(in)), B zero, s = alpha/r."""
    torch.manual_seed(0)
    branch = LoraBranch(400, 6, r=64, scaling=2.0)
    bound = 1 / 400**0.5
    assert branch.lora_A.abs().max() <= bound and branch.lora_A.abs().max() > 0.95 * bound
    assert branch.lora_B.abs().sum() == 0 and branch.scaling == 2.0
