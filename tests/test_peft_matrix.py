"""Every registered PEFT method x both tiny backbones (point transformer, timm ViT): the framework's promises.

The output at initialisation is checked against a table in tests/test_init_output.py; that every parameter moves
through the real trainer, in tests/test_params_update.py."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from peft_cases import (
    BACKBONES,
    CORE_WEIGHTS,
    allowed_trainable,
    build_backbone,
    eval_logits,
    expectation,
    loss_of,
    make_batch,
    method_config,
    method_variants,
    peft_pair,
    registered_methods,
    single_thread,  # noqa: F401  (fixture)
    supports,
    train_steps,
)
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft import get_peft_model, is_peft_model, load_adapter, merge, save_adapter

pytestmark = pytest.mark.usefixtures("single_thread")
METHODS = registered_methods()
VARIANTS = method_variants()  # every method, and its x_mode variant where it has one
CASES = [(label, cfg, b) for label, cfg in VARIANTS for b in BACKBONES if supports(cfg, b)]
IDS = [f"{label}-{b}" for label, _, b in CASES]


@pytest.mark.parametrize(("name", "cfg", "kind"), CASES, ids=IDS)
def test_only_expected_params_train_and_get_gradients(name: str, cfg: dict, kind: str) -> None:
    base, model = peft_pair(kind, cfg)
    base_names = {n for n, _ in base.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable, f"{name} trains nothing"
    if is_peft_model(model):
        allowed = allowed_trainable(model, base_names, expectation(cfg))
        extra = [n for n, p in model.named_parameters() if id(p) in trainable - allowed]
        assert not extra, f"{name} trains backbone parameters it does not declare: {extra[:5]}"
        declared = expectation(cfg).trains_backbone  # e.g. PointLoRA's released recipe trains encoder.first_conv
        core = [n for n, p in model.named_parameters() if p.requires_grad and any(c in n for c in CORE_WEIGHTS)
                and not any(n.endswith(s) for s in declared)]
        assert not core, f"{name} trains frozen backbone weights {core[:5]}"
    else:  # full fine-tuning
        assert len(trainable) == len(list(model.parameters()))
    inputs, labels = make_batch(kind)
    model.train()
    loss_of(model, inputs, labels).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None or expectation(cfg).drawn_experts, f"{name}: trainable {n} got no gradient"
        else:
            assert p.grad is None, f"{name}: frozen {n} got a gradient"


@pytest.mark.parametrize(("name", "cfg", "kind"), CASES, ids=IDS)
def test_optimizer_steps_reduce_loss_and_leave_frozen_weights(name: str, cfg: dict, kind: str) -> None:
    base, model = peft_pair(kind, cfg)
    inputs, labels = make_batch(kind)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        before = nn.functional.cross_entropy(eval_logits(model, inputs), labels).item()
    train_steps(model, inputs, labels, steps=6, lr=5e-3, weight_decay=0.05)
    with torch.no_grad():  # BatchNorms that train: statistics of the final weights ("precise BN"), not of step 1-6
        model.train()
        for _ in range(30):
            model(inputs)
        after = nn.functional.cross_entropy(eval_logits(model, inputs), labels).item()
    assert after < before, f"{name}: loss {before:.4f} -> {after:.4f} on a fixed batch"
    params = dict(model.named_parameters())
    for n, v in frozen.items():  # weight decay would move them if they were in the optimizer
        assert torch.equal(params[n], v), f"{name}: frozen {n} changed"
    assert any(not torch.equal(params[n], v) for n, v in trained.items())


@pytest.mark.parametrize(("name", "cfg", "kind"), CASES, ids=IDS)
def test_save_then_load_on_fresh_base_gives_same_logits(name: str, cfg: dict, kind: str, tmp_path) -> None:
    from safetensors.torch import load_file

    _, model = peft_pair(kind, cfg)
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=2)
    expected = eval_logits(model, inputs)
    save_adapter(model, tmp_path)
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not frozen & set(saved), f"{name}: adapter file holds frozen tensors {sorted(frozen & set(saved))[:5]}"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(saved)
    fresh = build_backbone(kind)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(eval_logits(fresh, inputs), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "cfg", "kind"), CASES, ids=IDS)
def test_merge_keeps_logits_or_refuses_clearly(name: str, cfg: dict, kind: str) -> None:
    base, model = peft_pair(kind, cfg)
    if not expectation(cfg).mergeable:
        with pytest.raises((ConfigError, ValueError), match=re.escape(cfg["type"])):
            merge(model)
        return
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=2)
    before = eval_logits(model, inputs)
    merge(model)
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    assert not any(hasattr(m, "peft_adapter") for m in model.modules()), "merged adapters must be removed"


@pytest.mark.parametrize("name", METHODS)
def test_batchnorm_statistics_follow_trainability(name: str) -> None:
    """With frozen_bn: eval, frozen BatchNorms (tokenizer) keep their running stats in train(); trained ones (head)
    update them (frozen_bn: train, the default, is tests/test_frozen_bn.py)."""
    _, model = peft_pair("point", method_config(name, frozen_bn="eval"))
    stats = {n: (m, m.running_mean.clone()) for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert stats
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=1)
    for n, (m, mean) in stats.items():
        frozen = not any(p.requires_grad for p in m.parameters())
        assert torch.equal(m.running_mean, mean) == frozen, f"{name}: BatchNorm {n} (frozen={frozen})"


@pytest.mark.parametrize("name", METHODS)
def test_unknown_config_key_names_itself(name: str) -> None:
    model = build_backbone("vit")
    with pytest.raises(ConfigError, match="no_such_option"):
        get_peft_model(model, method_config(name, no_such_option=3))
    assert getattr(model, "peft_config", None) is None


BAD_VALUES = [("adapter", "r", 0), ("adapter", "dropout", 1.0), ("dapt", "r", True), ("dapt", "dropout", "x"),
              ("lora", "r", -2), ("vpt_deep", "num_prompts", 0), ("vpt_deep", "dropout", -0.1), ("idpt", "k", 0),
              ("mhr", "heads", 1.5), ("mosa", "num_active", 0)]


@pytest.mark.parametrize(("name", "field", "value"), BAD_VALUES)
def test_bad_option_values_name_the_field(name: str, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"{field} must be"):
        get_peft_model(build_backbone("point"), method_config(name, **{field: value}))


def test_unknown_method_names_itself() -> None:
    with pytest.raises(ConfigError, match="no_such_method"):
        get_peft_model(build_backbone("point"), {"type": "no_such_method"})


@pytest.mark.parametrize("kind", BACKBONES)
def test_deepcopy_and_pickle_after_training_forward(kind: str) -> None:
    """Hooks are bound methods, transient graph tensors are dropped: every method's model copies and pickles."""
    inputs, labels = make_batch(kind)
    for cfg in (cfg for _, cfg in VARIANTS if supports(cfg, kind)):
        _, model = peft_pair(kind, cfg)
        model.train()
        loss_of(model, inputs, labels)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            torch.testing.assert_close(eval_logits(clone, inputs), eval_logits(model, inputs), rtol=0, atol=0)
            clone.train()  # the frozen-norm-aware train() survives the copy
            assert all(m.training == (cfg.get("frozen_bn", "train") == "train") for m in clone._peft_frozen_norms)


@pytest.mark.parametrize(("name", "cfg", "kind"), CASES, ids=IDS)
def test_injected_modules_follow_the_backbone_dtype(name: str, cfg: dict, kind: str) -> None:
    """Injecting into a model that was already converted (float64 here; a GPU model alike) just works."""
    model = get_peft_model(build_backbone(kind).double(), cfg)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    inputs, labels = make_batch(kind)
    model.train()
    loss = loss_of(model, inputs.double(), labels)
    assert loss.dtype == torch.float64
    loss.backward()
