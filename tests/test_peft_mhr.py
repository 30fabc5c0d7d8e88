"""MHR / Poly: per-task routing, per-head mixing, mhr_z (routing only), mhr_mu (averaged inventory), save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_cases import (
    BACKBONES,
    build_backbone,
    eval_logits,
    make_batch,
    single_thread,  # noqa: F401  (fixture)
    train_steps,
)

from pointpeft.errors import ConfigError
from pointpeft.peft import describe_backbone, get_peft_model, load_adapter, merge, save_adapter
from pointpeft.peft.mhr import RoutedLora, add_task, get_task, mhr_layers, set_task, to_mode

pytestmark = pytest.mark.usefixtures("single_thread")


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Trained-looking inventories and distinct routing rows (B starts at zero, Z almost even)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in mhr_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
            if layer.routing is not None:
                layer.routing.copy_(torch.randn(layer.routing.shape, generator=g) * 2)


def _mhr(kind: str, **cfg) -> torch.nn.Module:
    return get_peft_model(build_backbone(kind), {"type": "mhr", **cfg})


@pytest.mark.parametrize("kind", BACKBONES)
def test_task_routing_changes_outputs_per_task(kind: str) -> None:
    model = _mhr(kind, num_tasks=2)
    _randomise(model)
    inputs, _ = make_batch(kind)
    assert get_task(model) == 0
    out0 = eval_logits(model, inputs)
    set_task(model, 1)
    out1 = eval_logits(model, inputs)
    assert not torch.allclose(out0, out1, atol=1e-4)
    set_task(model, 0)
    torch.testing.assert_close(eval_logits(model, inputs), out0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="task_id"):
        set_task(model, 2)


def test_heads_route_rank_slices_separately() -> None:
    """``head_split: rank`` (the earlier variant): head j owns ranks j*r/h.. of every adapter."""
    torch.manual_seed(0)
    layer = RoutedLora(6, 5, r=4, num_skills=3, heads=2, num_tasks=1, scaling=2.0, head_split="rank")
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.routing.normal_()
    w = torch.sigmoid(layer.routing[0])
    w = w / w.sum(-1, keepdim=True)  # (heads, K)
    a, b = layer.mixed()
    for j, sl in enumerate((slice(0, 2), slice(2, 4))):  # head j owns ranks sl of every adapter
        torch.testing.assert_close(a[sl], sum(w[j, k] * layer.lora_A[k, sl] for k in range(3)))
        torch.testing.assert_close(b[:, sl], sum(w[j, k] * layer.lora_B[k, :, sl] for k in range(3)))
    x = torch.randn(7, 6)
    torch.testing.assert_close(layer(x), 2.0 * x @ a.t() @ b.t())
    torch.testing.assert_close(layer.delta_weight(), 2.0 * b @ a)


def _mttl_skilled_lora(x: torch.Tensor, layer: RoutedLora, w: torch.Tensor) -> torch.Tensor:
    """mttl's SkilledLoRA.forward_linear_ with weights (1, heads, K), re-typed from its layout: lora_a (K, q, in/q,
    r), lora_b (K, r, q, out/q), ``A = einsum("bqs,sqdr->bqdr")``, ``B = einsum("bqs,srqd->brqd")``."""
    K, q, r, i, o = layer.num_skills, layer.heads, layer.r, layer.in_features, layer.out_features
    lora_a = layer.lora_A.permute(0, 2, 1).reshape(K, q, i // q, r)  # ours (K, r, in) -> mttl (K, q, in/q, r)
    lora_b = layer.lora_B.permute(0, 2, 1).reshape(K, r, q, o // q)  # ours (K, out, r) -> mttl (K, r, q, out/q)
    a = torch.einsum("bqs,sqdr->bqdr", w, lora_a).reshape(1, i, r)
    b = torch.einsum("bqs,srqd->brqd", w, lora_b).reshape(1, r, o)
    return x.unsqueeze(0).bmm(a).bmm(b)[0] * layer.scaling


def test_heads_slice_features_as_mttl_and_init_range() -> None:
    torch.manual_seed(0)
    layer = RoutedLora(8, 12, r=3, num_skills=3, heads=4, num_tasks=1, scaling=0.5)
    assert layer.head_split == "features"
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.routing.normal_()
    w = layer.routing_weights().unsqueeze(0)
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), _mttl_skilled_lora(x, layer, w))
    other = RoutedLora(8, 12, r=4, num_skills=3, heads=2, num_tasks=1, scaling=0.5)
    with torch.no_grad():
        other.lora_B.normal_()
        other.routing.normal_()
    by_rank = copy.deepcopy(other)
    by_rank.head_split = "rank"
    assert not torch.allclose(by_rank(x), other(x), atol=1e-3)  # same inventory and Z, different mixtures
    big = RoutedLora(300, 4, r=64, num_skills=2, heads=1, num_tasks=1, scaling=1.0)
    bound = 1 / (3 * 300) ** 0.5  # mttl: gain(leaky_relu, sqrt 5) / sqrt(in)
    assert big.lora_A.abs().max() <= bound and big.lora_A.abs().max() > 0.95 * bound
    kaiming = RoutedLora(300, 4, r=64, num_skills=2, heads=1, num_tasks=1, scaling=1.0, init="kaiming")
    assert kaiming.lora_A.abs().max() > 1.5 * bound


def test_mhr_mu_average_steps_as_uniform_skills_under_adamw() -> None:
    """mttl keeps K skills under a uniform selector; ours trains their average: one AdamW step agrees."""
    torch.manual_seed(0)
    skills = RoutedLora(6, 6, r=2, num_skills=4, heads=1, num_tasks=1, scaling=1.0)
    with torch.no_grad():
        skills.lora_B.normal_()
        skills.routing.zero_()  # sigmoid(0) for every skill: the uniform mix
    skills.routing.requires_grad_(False)
    avg = copy.deepcopy(skills)
    avg.average_inventory()
    x = torch.randn(9, 6)
    torch.testing.assert_close(avg(x), skills(x))
    for layer in (skills, avg):
        opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
        layer(x).pow(2).sum().backward()
        opt.step()
    torch.testing.assert_close(avg(x), skills(x), rtol=1e-4, atol=1e-5)


def test_mhr_z_trains_only_the_routing() -> None:
    model = _mhr("point", train_head=False, train_cls_token=False)
    _randomise(model)
    to_mode(model, "mhr_z")
    assert model.peft_config.mode == "mhr_z"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("peft_adapter.routing") for n in trainable)
    inv = {n: b.clone() for n, b in model.named_buffers() if n.endswith(("lora_A", "lora_B"))}
    assert len(inv) == 2 * len(mhr_layers(model))
    z = [layer.routing.detach().clone() for layer in mhr_layers(model)]
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=2)
    bufs = dict(model.named_buffers())
    assert all(torch.equal(bufs[n], v) for n, v in inv.items())
    assert all(not torch.equal(layer.routing, z0) for layer, z0 in zip(mhr_layers(model), z))
    to_mode(model, "mhr")  # and back: the inventory trains again
    assert all(layer.lora_A.requires_grad for layer in mhr_layers(model))


def test_mhr_mu_equals_the_average_adapter() -> None:
    base = build_backbone("point")
    model = get_peft_model(copy.deepcopy(base), {"type": "mhr", "mode": "poly"})
    _randomise(model)
    layers = mhr_layers(model)
    means = [(layer.lora_A.detach().mean(0), layer.lora_B.detach().mean(0), layer.scaling) for layer in layers]
    to_mode(model, "mhr_mu")
    assert model.peft_config.mode == "mhr_mu"
    for layer, (a, b, s) in zip(layers, means):
        assert layer.routing is None and layer.num_skills == 1 and layer.lora_A.requires_grad
        torch.testing.assert_close(layer.delta_weight(), s * b @ a)
    # the model equals the base with every qkv weight plus the averaged adapter's update
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for block, (a, b, s) in zip(describe_backbone(ref).blocks, means):
            block.attn.qkv.weight.add_(s * b @ a)
    inputs, _ = make_batch("point")
    torch.testing.assert_close(eval_logits(model, inputs), eval_logits(ref, inputs), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="mhr_mu"):
        to_mode(model, "mhr")


def test_poly_expands_exactly_to_mhr_heads() -> None:
    model = _mhr("vit", mode="poly", heads=2)
    _randomise(model)
    inputs, _ = make_batch("vit")
    before = eval_logits(model, inputs)
    to_mode(model, "mhr_z")
    assert all(layer.heads == 2 for layer in mhr_layers(model))
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="head"):
        to_mode(model, "poly")


@pytest.mark.parametrize("final_mode", ["mhr_z", "mhr_mu"])
def test_add_task_and_save_load_round_trip(final_mode: str, tmp_path) -> None:
    model = _mhr("point", num_tasks=2)
    _randomise(model)
    new = add_task(model, init="mean")
    assert new == 2 and get_task(model) == 2 and model.peft_config.num_tasks == 3
    layer = mhr_layers(model)[0]
    torch.testing.assert_close(layer.routing[2], layer.routing[:2].mean(0))
    to_mode(model, final_mode)
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=2)
    expected = eval_logits(model, inputs)
    save_adapter(model, tmp_path)
    fresh = load_adapter(build_backbone("point"), tmp_path)
    assert fresh.peft_config.mode == final_mode and fresh.peft_config.num_tasks == 3
    if final_mode == "mhr_z":
        set_task(fresh, 2)
    torch.testing.assert_close(eval_logits(fresh, inputs), expected, rtol=0, atol=1e-6)


def test_merge_folds_the_current_task() -> None:
    model = _mhr("vit", num_tasks=2)
    _randomise(model)
    set_task(model, 1)
    inputs, _ = make_batch("vit")
    before = eval_logits(model, inputs)
    merge(model)
    assert not any(isinstance(m, RoutedLora) for m in model.modules())
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("node", "field"), [({"mode": "soft"}, "mode"), ({"r": 6, "heads": 4, "head_split": "rank"}, "heads"),
                                             ({"heads": 5}, "heads"), ({"head_split": "x"}, "head_split"),
                                             ({"num_skills": 0}, "num_skills"),
                                             ({"target_modules": ["nope"]}, "target_modules")])
def test_bad_config_names_the_field(node: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _mhr("point", **node)


def test_relaxed_bernoulli_samples_in_training_only() -> None:
    """mttl's module_logits_relaxed_bernoulli: training weights from RelaxedBernoulli(1, Z); eval uses sigmoid(Z)."""
    torch.manual_seed(0)
    layer = RoutedLora(8, 8, r=2, num_skills=4, heads=2, num_tasks=1, scaling=1.0, relaxed_bernoulli=True)
    layer.eval()
    torch.testing.assert_close(layer.routing_weights(), layer.routing_weights())
    plain = torch.sigmoid(layer.routing[0])
    torch.testing.assert_close(layer.routing_weights(), plain / plain.sum(-1, keepdim=True))
    layer.train()
    a, b = layer.routing_weights(), layer.routing_weights()
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a.sum(-1), torch.ones(2))
    a[0, 0].backward()  # reparameterised: the logits get a gradient
    assert layer.routing.grad.abs().sum() > 0
