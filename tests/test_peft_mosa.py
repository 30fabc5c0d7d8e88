"""MoSA: disjoint covering masks, sparse training routes, two-route consistency loss, merge into fc2."""

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
from pointpeft.peft import get_peft_model, load_adapter, merge, save_adapter, training_forward
from pointpeft.peft.mosa import TENSORS, SparseAdapter, sparse_adapters, symmetric_kl

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("hierarchical", [False, True])
def test_module_masks_are_disjoint_and_cover_every_weight(hierarchical: bool) -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mosa", "num_modules": 4,
                                                     "hierarchical": hierarchical})
    adapters = sparse_adapters(model)
    assert len(adapters) == 2
    for ad in adapters:
        with torch.no_grad():
            for name in TENSORS:
                getattr(ad, name).normal_()
        counts = {name: torch.zeros_like(getattr(ad, name)) for name in TENSORS}
        total = {name: torch.zeros_like(getattr(ad, name)) for name in TENSORS}
        for n in range(ad.num_modules):
            for name, t in ad.module_tensors(n).items():
                counts[name] += ad.module_mask(name, [n]).float()
                total[name] += t
            assert ad.module_mask("down_weight", [n]).any()  # no empty module
        for name in TENSORS:
            assert torch.equal(counts[name], torch.ones_like(counts[name])), name  # each element in exactly one
            torch.testing.assert_close(total[name], getattr(ad, name))  # the modules sum to the dense adapter
    a, b = adapters  # blocks get different (seeded) splits, reproducible from the seed
    assert not torch.equal(a.down_weight_module, b.down_weight_module)
    again = get_peft_model(build_backbone("point"), {"type": "mosa", "hierarchical": hierarchical})
    assert torch.equal(sparse_adapters(again)[0].down_weight_module, a.down_weight_module)


@pytest.mark.parametrize("view", ["module", "masked"])
def test_training_forward_uses_only_the_drawn_modules(view: str) -> None:
    torch.manual_seed(0)
    ad = SparseAdapter(16, 8, num_modules=4, num_active=1, num_groups=2, num_active_groups=1, sparse_view=view)
    with torch.no_grad():
        ad.up_weight.normal_()
        ad.up_bias.normal_()
        ad.down_weight.add_(torch.randn_like(ad.down_weight))  # trained away from its initial values
    x = torch.randn(3, 16)
    ad.train()
    ad.route = ([2], [1])
    y = ad(x)
    y.sum().backward()
    ch = ad.group_mask([1])
    for name in TENSORS:
        keep = ad.module_mask(name, [2])
        if name == "down_weight":
            keep = keep & ch.unsqueeze(1)
        elif name in ("down_bias", "up_weight"):
            keep = keep & ch
        grad = getattr(ad, name).grad
        assert (grad[~keep] == 0).all(), name  # inactive modules / channel groups get no gradient
        assert grad[keep].abs().sum() > 0, name
    t = ad.sparse_tensors([2], [1])
    manual = torch.nn.functional.linear(torch.nn.functional.linear(x, t["down_weight"], t["down_bias"]),
                                        t["up_weight"], t["up_bias"])
    torch.testing.assert_close(y, manual)
    own = ad.module_mask("down_weight", [2])
    keep_dw = own & ch.unsqueeze(1)
    off = ch.unsqueeze(1).expand_as(own)  # rows of the active channel group
    if view == "masked":  # zeros elsewhere, rescaled 4/1 (modules) * 2/1 (groups)
        torch.testing.assert_close(t["down_weight"][keep_dw], ad.down_weight[keep_dw] * 4 * 2)
        assert (t["down_weight"][~keep_dw] == 0).all()
    else:  # its own trained elements over everyone's initial values (groups still rescale 2/1)
        torch.testing.assert_close(t["down_weight"][keep_dw], ad.down_weight[keep_dw] * 2)
        torch.testing.assert_close(t["down_weight"][~own & off], ad.down_weight_init[~own & off] * 2)
        assert (t["down_weight"][~off] == 0).all()
        assert not torch.equal(ad.down_weight_init, ad.down_weight)
    ad.eval()
    d = ad.dense_tensors()
    dense = torch.nn.functional.linear(torch.nn.functional.linear(x, d["down_weight"], d["down_bias"]),
                                       d["up_weight"], d["up_bias"])
    torch.testing.assert_close(ad(x), dense)  # evaluation uses every module: the merged adapter
    if view == "masked":
        torch.testing.assert_close(d["down_weight"], ad.down_weight)


@pytest.mark.parametrize(("merge_mode", "factor"), [("mean", 0.25), ("sum", 1.0)])
def test_merged_adapter_is_the_mean_or_sum_of_the_modules(merge_mode: str, factor: float) -> None:
    """``mean`` is the official merge('add'): the average of the module adapters' full weights."""
    torch.manual_seed(0)
    ad = SparseAdapter(16, 8, num_modules=4, num_active=1, module_merge=merge_mode)
    with torch.no_grad():
        for name in TENSORS:
            getattr(ad, name).add_(torch.randn_like(getattr(ad, name)))
    merged = ad.dense_tensors()
    modules = [ad.sparse_tensors([n], None) for n in range(4)]
    for name in TENSORS:
        init = getattr(ad, f"{name}_init")
        torch.testing.assert_close(merged[name], init + factor * (getattr(ad, name) - init))
        if merge_mode == "mean":
            torch.testing.assert_close(merged[name], torch.stack([m[name] for m in modules]).mean(0))


def test_module_view_starts_as_the_dense_adapter() -> None:
    """Before training every module IS the initial adapter, so the first step has no DropConnect noise."""
    torch.manual_seed(0)
    ad = SparseAdapter(16, 8, num_modules=4, num_active=1)
    x = torch.randn(3, 16)
    ad.train()
    h = [torch.nn.functional.linear(x, t["down_weight"], t["down_bias"])
         for t in (ad.sparse_tensors([n], None) for n in range(4))]
    for other in h[1:]:
        torch.testing.assert_close(other, h[0])
    torch.testing.assert_close(h[0], torch.nn.functional.linear(x, ad.down_weight, ad.down_bias))


@pytest.mark.parametrize("kind", BACKBONES)
def test_consistency_loss_is_positive_and_has_gradients(kind: str) -> None:
    model = get_peft_model(build_backbone(kind), {"type": "mosa", "num_modules": 4, "num_active": 2})
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=2)  # up projections leave zero, so routes differ
    model.train()
    model.zero_grad(set_to_none=True)
    logits, aux = training_forward(model, inputs)
    cons = aux["consistency_loss"]
    assert cons.item() > 0
    cons.backward()
    ad = sparse_adapters(model)[0]
    assert ad.up_weight.grad is not None and ad.up_weight.grad.abs().sum() > 0
    off = get_peft_model(build_backbone(kind), {"type": "mosa", "consistency_weight": 0.0})
    off.train()
    assert "consistency_loss" not in training_forward(off, inputs)[1]


def test_symmetric_kl_values() -> None:
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, 0.5]])
    pa, pb = a.softmax(-1), b.softmax(-1)
    expected = 0.5 * ((pa * (pa / pb).log()).sum() + (pb * (pb / pa).log()).sum())
    torch.testing.assert_close(symmetric_kl(a, b), expected)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("hierarchical", [False, True])
def test_merge_folds_into_fc2_with_identical_eval_outputs(kind: str, hierarchical: bool) -> None:
    base = build_backbone(kind)
    model = get_peft_model(copy.deepcopy(base), {"type": "mosa", "hierarchical": hierarchical, "scale": 0.5})
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=3)
    before = eval_logits(model, inputs)
    merge(model)
    assert not sparse_adapters(model)
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=1e-5, atol=1e-5)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("mlp.fc2" in n for n in changed)


def test_nonlinear_adapter_refuses_to_merge_and_masks_are_saved(tmp_path) -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mosa", "activation": "gelu"})
    with pytest.raises(ConfigError, match="mosa"):
        merge(model)
    save_adapter(model, tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert sum(k.endswith("_module") for k in saved) == 2 * len(TENSORS)
    with torch.no_grad():  # a different split on disk is what the loaded model uses
        sparse_adapters(model)[0].down_weight_module.fill_(3)
    save_adapter(model, tmp_path)
    fresh = load_adapter(build_backbone("point"), tmp_path)
    assert (sparse_adapters(fresh)[0].down_weight_module == 3).all()


@pytest.mark.parametrize(("node", "field"), [({"num_active": 5}, "num_active"), ({"activation": "tanh"}, "activation"),
                                             ({"hierarchical": True, "num_groups": 99}, "num_groups"),
                                             ({"consistency_weight": -1}, "consistency_weight"),
                                             ({"sparse_view": "dense"}, "sparse_view"),
                                             ({"module_merge": "max"}, "module_merge")])
def test_bad_config_names_the_field(node: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        get_peft_model(build_backbone("point"), {"type": "mosa", **node})
