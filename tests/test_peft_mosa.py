"""MoSA: the released expert-split AdaptFormer-style adapter (defaults), its training and merge; and the earlier
linear variant (``style: linear``): disjoint covering masks, sparse training routes, merge into fc2."""

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
from pointpeft.peft.mosa import (
    TENSORS,
    MergedAdapter,
    MosaAdapter,
    SparseAdapter,
    merge_experts,
    mosa_adapters,
    sparse_adapters,
    symmetric_kl,
)

pytestmark = pytest.mark.usefixtures("single_thread")
#: the earlier variant with its former defaults (linear adapter after fc2, r 16, scale 1)
LINEAR = {"type": "mosa", "style": "linear", "r": 16, "scale": 1.0}


@pytest.mark.parametrize("hierarchical", [False, True])
def test_module_masks_are_disjoint_and_cover_every_weight(hierarchical: bool) -> None:
    model = get_peft_model(build_backbone("point"), {**LINEAR, "num_modules": 4,
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
    again = get_peft_model(build_backbone("point"), {**LINEAR, "hierarchical": hierarchical})
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
    model = get_peft_model(build_backbone(kind), {**LINEAR, "num_modules": 4, "num_active": 2})
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
    off = get_peft_model(build_backbone(kind), {"type": "mosa", "consistency_weight": 0.0})  # default style
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
    model = get_peft_model(copy.deepcopy(base), {**LINEAR, "hierarchical": hierarchical, "scale": 0.5})
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=3)
    before = eval_logits(model, inputs)
    merge(model)
    assert not sparse_adapters(model)
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=1e-5, atol=1e-5)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("mlp.fc2" in n for n in changed)


def test_nonlinear_adapter_refuses_to_merge_and_masks_are_saved(tmp_path) -> None:
    model = get_peft_model(build_backbone("point"), {**LINEAR, "activation": "gelu"})
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
        get_peft_model(build_backbone("point"), {**LINEAR, **node})
    for bad in ({"style": "houlsby"}, {"share": "all"}, {"num_active": 2}):  # released style: one expert a draw
        with pytest.raises(ConfigError, match=next(iter(bad))):
            get_peft_model(build_backbone("point"), {"type": "mosa", **bad})


# -- the released MoSA (defaults) ---------------------------------------------------------------------------------
def _randomise_experts(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for ad in mosa_adapters(model):
            for p in ad.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_default_is_the_parallel_nonlinear_adapter_on_the_residual_stream() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mosa"})
    cfg = model.peft_config
    assert (cfg.style, cfg.r, cfg.share, cfg.num_modules, cfg.split_bias) == ("adaptformer", 64, "down", 4, False)
    assert (cfg.adapter_scale, cfg.adapter_dropout, cfg.consistency_detach) == (0.1, 0.1, True)
    block = model.blocks.blocks[0]
    ad = block.peft_mosa
    assert isinstance(ad, MosaAdapter) and ad.norm.eps == 1e-6
    assert ad.down.num_experts == 1 and ad.up.num_experts == 4  # SHARE=down: one dense down, the up split
    _randomise_experts(model)
    x = torch.randn(2, 17, 64)
    block.eval()
    with torch.no_grad():
        h = x + block.attn(block.norm1(x))
        (wd, bd), (wu, bu) = ad.down.merged(), ad.up.merged()
        adapter = 0.1 * torch.nn.functional.linear(torch.nn.functional.gelu(
            torch.nn.functional.linear(ad.norm(h), wd, bd)), wu, bu)
        torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)) + adapter, rtol=1e-5, atol=1e-5)
        assert adapter.abs().mean() > 1e-3


def test_expert_masks_are_exactly_balanced_and_biases_are_not_split() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mosa", "r": 7, "num_modules": 3})
    up = mosa_adapters(model)[0].up
    sizes = [getattr(up, f"weight_{k}").numel() for k in range(3)]
    assert sum(sizes) == 7 * 64 and max(sizes) - min(sizes) <= 1  # 448 elements: 149 / 149 / 150
    owner = up.weight_owner.long().flatten()
    assert sorted(torch.bincount(owner, minlength=3).tolist()) == sorted(sizes)
    assert all(getattr(up, f"bias_{k}").shape == (64,) for k in range(3))  # each expert trains its whole bias
    _randomise_experts(model)
    experts = [up.expert(k) for k in range(3)]
    w_all = sum(w for w, _ in experts)  # disjoint elements over a zero init: the experts sum to the full weight
    for k, (w, _) in enumerate(experts):
        assert (w.flatten()[owner != k] == 0).all()
    merged_w, merged_b = up.merged()
    torch.testing.assert_close(merged_w, w_all / 3)
    torch.testing.assert_close(merged_b, sum(b for _, b in experts) / 3)


def test_each_expert_has_its_own_optimiser_state_and_steps_only_when_drawn() -> None:
    from pointpeft.engine.optim import build_optimizer

    model = get_peft_model(build_backbone("point"), {"type": "mosa", "consistency_weight": 0.0, "dropout": 0.0})
    opt = build_optimizer({"type": "adamw", "lr": 1e-2}, model)
    inputs, labels = make_batch("point")
    ads = mosa_adapters(model)

    def step(expert: int) -> dict[str, torch.Tensor]:
        for ad in ads:
            ad.route = (0, expert)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "peft_mosa.up." in n}
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(training_forward(model, inputs)[0], labels).backward()
        opt.step()
        return before

    step(2)  # expert 2's up weight is zero: only its bias moves in the first step; then its weight too
    before = step(2)
    params = dict(model.named_parameters())
    for n, old in before.items():
        moved = not torch.equal(params[n], old)
        assert moved == n.endswith(("weight_2", "bias_2")), n
    before = step(1)
    for n, old in before.items():
        assert (not torch.equal(params[n], old)) == n.endswith(("weight_1", "bias_1")), n  # no momentum drift
    up = ads[0].up
    assert int(opt.state[up.weight_2]["step"]) == 2 and int(opt.state[up.weight_1]["step"]) == 1
    assert up.weight_0 not in opt.state and up.bias_3 not in opt.state


def test_consistency_gradient_detaches_the_target_as_the_official_loss() -> None:
    def official(inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:  # MoSA src/solver/losses.py
        f = torch.nn.functional
        return 0.5 * (f.kl_div(f.log_softmax(inp, -1), f.softmax(tgt.detach(), -1), reduction="batchmean")
                      + f.kl_div(f.log_softmax(tgt, -1), f.softmax(inp.detach(), -1), reduction="batchmean"))

    g = torch.Generator().manual_seed(0)
    a0, b0 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    grads = {}
    for label, fn in (("ours", symmetric_kl), ("official", official),
                      ("full", lambda a, b: symmetric_kl(a, b, detach_target=False))):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        value = fn(a, b)
        value.backward()
        grads[label] = (value.detach(), a.grad, b.grad)
    for i in range(3):
        torch.testing.assert_close(grads["ours"][i], grads["official"][i])
    torch.testing.assert_close(grads["full"][0], grads["ours"][0])  # same value ...
    assert not torch.allclose(grads["full"][1], grads["ours"][1])  # ... other gradients


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("share", ["down", "none"])
def test_merged_experts_give_the_unmerged_eval_output(kind: str, share: str) -> None:
    model = get_peft_model(build_backbone(kind), {"type": "mosa", "share": share, "r": 8})
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=3)
    before = eval_logits(model, inputs)
    with pytest.raises(ConfigError, match="merge_experts"):
        merge(model)  # non-linear: cannot fold into the backbone
    merge_experts(model)
    assert not mosa_adapters(model) and any(isinstance(m, MergedAdapter) for m in model.modules())
    torch.testing.assert_close(eval_logits(model, inputs), before, rtol=1e-6, atol=1e-6)


def test_pfeiffer_style_is_sequential_after_the_ffn() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mosa", "style": "pfeiffer"})
    mlp = model.blocks.blocks[0].mlp
    ad = mlp.peft_adapter
    assert (ad.activation, ad.scale, ad.dropout) == ("relu", 1.0, 0.0)
    _randomise_experts(model)
    x = torch.randn(2, 5, 64)
    mlp.eval()
    with torch.no_grad():
        f = mlp.fc2(mlp.act(mlp.fc1(x)))
        torch.testing.assert_close(mlp(x), f + ad(f))


def test_expert_biases_are_not_decayed_but_expert_weights_are() -> None:
    from pointpeft.engine.optim import no_decay_reason

    model = get_peft_model(build_backbone("point"), {"type": "mosa"})
    reasons = no_decay_reason(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad and "peft_mosa" in n]
    biases = [n for n in names if n.rsplit(".", 1)[-1].startswith("bias") and ".norm." not in n]
    assert len(biases) == 2 * (1 + 4) and all(reasons.get(n) == "bias" for n in biases)  # dense down + 4 experts
    assert all(n not in reasons for n in names if n.rsplit(".", 1)[-1].startswith("weight_"))
    assert all(reasons.get(n) == "norm" for n in names if ".norm." in n)


def test_expert_split_is_saved_and_reloaded(tmp_path) -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mosa", "r": 8})
    up = mosa_adapters(model)[0].up
    with torch.no_grad():  # another (balanced) split on disk: the reloaded model must use it
        up.weight_owner.copy_(up.weight_owner.flip(0))
    _randomise_experts(model)
    inputs, _ = make_batch("point")
    expected = eval_logits(model, inputs)
    save_adapter(model, tmp_path)
    fresh = load_adapter(build_backbone("point"), tmp_path)
    fresh_up = mosa_adapters(fresh)[0].up
    torch.testing.assert_close(eval_logits(fresh, inputs), expected, rtol=0, atol=1e-6)
    assert torch.equal(fresh_up.weight_owner, up.weight_owner) and torch.equal(fresh_up.index_1, up.index_1)


class _OfficialAdaptFormerMoSA(torch.nn.Module):
    """MoSA's ``MoSABlock`` AdaptFormer branch with ``SHARE=down`` (vit_mosa.py), re-typed: ``adapter_up`` is a list
    of full expert Linears whose gradients ``trainer.py`` masks with ``p.mask`` (``pruner.divide``)."""

    def __init__(self, ours: MosaAdapter) -> None:
        super().__init__()
        f = torch.nn
        self.adapter_norm = copy.deepcopy(ours.norm)
        self.adapter_down = f.Linear(ours.dim, ours.r)
        self.adapter_up = f.ModuleList(f.Linear(ours.r, ours.dim) for _ in range(ours.num_experts))
        with torch.no_grad():
            self.adapter_down.weight.copy_(ours.down.weight)
            self.adapter_down.bias.copy_(ours.down.bias)
            for k, up in enumerate(self.adapter_up):
                w, b = ours.up.expert(k)
                up.weight.copy_(w)
                up.bias.copy_(b)
                up.weight.mask = (ours.up.weight_owner.long() == k).view_as(w).to(w.dtype)
                up.bias.mask = torch.ones_like(b)  # MODEL.ADAPTER.BIAS: 1-D masks are all ones
        self.scale = ours.scale

    def forward(self, h: torch.Tensor, b: int) -> torch.Tensor:
        adpt = torch.nn.functional.gelu(self.adapter_down(self.adapter_norm(h)))
        return self.adapter_up[b](adpt) * self.scale

    def merged_up(self) -> tuple[torch.Tensor, torch.Tensor]:  # merge('add'): sum / expert_num
        return (sum(u.weight for u in self.adapter_up) / len(self.adapter_up),
                sum(u.bias for u in self.adapter_up) / len(self.adapter_up))


def test_training_matches_the_official_module_step_for_step() -> None:
    """Same weights, same draws, AdamW: the official experts (masked gradients, set_to_none) and ours stay equal."""
    torch.manual_seed(0)
    ours = MosaAdapter(12, 6, num_experts=4, dropout=0.0, seed=3)
    official = _OfficialAdaptFormerMoSA(ours)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.05)
    opt_off = torch.optim.AdamW(official.parameters(), lr=1e-2, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    ours.train()
    for b in (1, 1, 3, 0, 1):
        x, target = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
        ours.route = (0, b)
        for module, opt in ((ours, opt_ours), (official, opt_off)):
            opt.zero_grad(set_to_none=True)
            out = ours(x) if module is ours else official(x, b)
            (out - target).pow(2).mean().backward()
            for p in module.parameters():  # trainer.py --sparse-train: p.grad.data *= p.mask
                if p.grad is not None and hasattr(p, "mask"):
                    p.grad.mul_(p.mask)
            opt.step()
        torch.testing.assert_close(ours(x), official(x, b), rtol=1e-5, atol=1e-6)
    w, bias = ours.up.merged()
    w_off, b_off = official.merged_up()
    torch.testing.assert_close(w, w_off, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias, b_off, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.down.weight, official.adapter_down.weight, rtol=1e-5, atol=1e-6)
