"""Adapter-X: shared SMoA, top-1 cosine routing, Switch balance loss, expert usage, prompt generators, x_mode."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from peft_cases import (
    BACKBONES,
    build_backbone,
    eval_logits,
    loss_of,
    make_batch,
    single_thread,  # noqa: F401  (fixture)
    tiny_point,
)
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft import get_peft_model, load_adapter, save_adapter, training_forward
from pointpeft.peft.adapter import Bottleneck
from pointpeft.peft.adapterx import (
    SMoA,
    SMoABlock,
    XOptions,
    attach_smoa,
    build_smoa_pool,
    expert_usage,
    reset_expert_usage,
    routing_choices,
    smoa_blocks,
    switch_balance_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _randomise(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _naive_smoa(pool: SMoA, x: torch.Tensor, router: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sub-token loop: cosine logits / temperature, softmax, top-1, scale * p * expert(x)."""
    B, T, D = x.shape
    h, d = pool.num_heads, pool.sub_dim
    out = torch.zeros_like(x)
    choice = torch.zeros(B, T, h, dtype=torch.long)
    emb = router.expert_embeddings / router.expert_embeddings.norm(dim=-1, keepdim=True)
    ex = pool.experts
    for b in range(B):
        for t in range(T):
            for k in range(h):
                s = x[b, t, k * d:(k + 1) * d]
                z = router.proj.weight @ s
                logits = (emb @ (z / z.norm())) / router.temperature()
                p = logits.softmax(-1)
                e = int(p.argmax())
                y = F.gelu(s @ ex.w_down[e] + ex.b_down[e]) @ ex.w_up[e] + ex.b_up[e]
                out[b, t, k * d:(k + 1) * d] = ex.scale * p[e] * y
                choice[b, t, k] = e
    if pool.merge is not None:
        out = pool.merge(out)
    return out, choice


@pytest.mark.parametrize("merge_proj", [False, True])
def test_vectorised_routing_matches_per_token_loop(merge_proj: bool) -> None:
    torch.manual_seed(0)
    opts = XOptions(num_experts=5, num_heads=4, bottleneck=6, scale=0.7, merge_proj=merge_proj)
    pool = build_smoa_pool(32, opts).eval()
    _randomise(pool)
    with torch.no_grad():  # a moderate temperature so several experts win somewhere
        pool.router.log_inv_temperature.fill_(1.0)
    x = torch.randn(2, 7, 32)
    res = pool(x)
    ref, choice = _naive_smoa(pool, x, pool.router)
    torch.testing.assert_close(res.out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(res.choice, choice)
    assert res.choice.unique().numel() > 1
    torch.testing.assert_close(res.probs.sum(-1), torch.ones(2 * 7 * 4))


def test_temperature_starts_at_007_and_is_clamped() -> None:
    pool = build_smoa_pool(16, XOptions(num_experts=2, num_heads=1, bottleneck=4, temperature_min=0.05,
                                        temperature_init=0.07))
    assert pool.router.temperature().item() == pytest.approx(0.07)
    with torch.no_grad():
        pool.router.log_inv_temperature.fill_(10.0)
    assert pool.router.temperature().item() == pytest.approx(0.05)
    emb = pool.router.expert_embeddings
    torch.testing.assert_close(emb @ emb.t(), torch.eye(2), atol=1e-5, rtol=0)  # orthogonal init


def test_switch_balance_loss_on_hand_made_case() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    idx = probs.argmax(-1)  # f = [3/4, 1/4], P = [0.65, 0.35]
    assert switch_balance_loss(probs, idx, 2).item() == pytest.approx(2 * (0.75 * 0.65 + 0.25 * 0.35))
    uniform = torch.full((8, 4), 0.25)
    assert switch_balance_loss(uniform, torch.arange(8) % 4, 4).item() == pytest.approx(1.0)


def test_block_aux_loss_is_weighted_switch_loss_in_training_only() -> None:
    torch.manual_seed(0)
    opts = XOptions(num_experts=4, num_heads=2, bottleneck=4, balance_loss_weight=0.05)
    pool = build_smoa_pool(16, opts)
    block = SMoABlock(pool, 0, pool.opts)
    x = torch.randn(3, 5, 16)
    block.train()
    block(x)
    res = pool(x)
    expected = 0.05 * switch_balance_loss(res.probs, res.choice, 4)
    torch.testing.assert_close(block.aux_losses()["balance_loss"], expected)
    block.eval()
    block(x)
    assert block.aux_losses() == {}
    off = SMoABlock(pool, 1, XOptions(num_experts=4, num_heads=2, bottleneck=4, balance_loss_weight=0.0))
    off.train()
    off(x)
    assert off.aux_losses() == {}


@pytest.mark.parametrize("kind", BACKBONES)
def test_pool_is_one_shared_object(kind: str) -> None:
    model = get_peft_model(build_backbone(kind), {"type": "adapterx"})
    blocks = smoa_blocks(model)
    assert len(blocks) == len(list(model.blocks.blocks if kind == "point" else model.blocks))
    assert all(b.pool is model.peft_smoa for b in blocks)
    assert all(b.router is None for b in blocks)  # router: shared lives in the pool
    expert_keys = [k for k in model.state_dict() if "w_down" in k]
    assert expert_keys == ["peft_smoa.experts.w_down"]
    # parameters counted once: the pool is a child of the model only
    n_pool = sum(p.numel() for p in model.peft_smoa.parameters())
    n_smoa = sum(p.numel() for n, p in model.named_parameters() if "peft_smoa" in n)
    assert n_pool == n_smoa
    assert type(model.peft_smoa) is SMoA and all(type(b) is SMoABlock for b in blocks)


def test_per_block_routers_differ() -> None:
    model = get_peft_model(tiny_point(), {"type": "adapterx", "router": "per_block"})
    blocks = smoa_blocks(model)
    assert model.peft_smoa.router is None
    routers = [b.router for b in blocks]
    assert len({id(r) for r in routers}) == len(routers)
    assert not torch.equal(routers[0].proj.weight, routers[1].proj.weight)


def test_same_classes_on_point_transformer_and_vit() -> None:
    pt = get_peft_model(build_backbone("point"), {"type": "adapterx"})
    vit = get_peft_model(build_backbone("vit"), {"type": "adapterx"})
    assert type(pt.peft_smoa) is type(vit.peft_smoa) is SMoA
    assert {type(b) for b in smoa_blocks(pt)} == {type(b) for b in smoa_blocks(vit)} == {SMoABlock}
    assert pt.peft_smoa.opts.preset == "point" and vit.peft_smoa.opts.preset == "vit"


@pytest.mark.parametrize("kind", BACKBONES)
def test_expert_usage_and_routing_choices(kind: str) -> None:
    model = get_peft_model(build_backbone(kind), {"type": "adapterx"})
    inputs, _ = make_batch(kind)
    eval_logits(model, inputs)
    eval_logits(model, inputs)
    usage = expert_usage(model)
    E = model.peft_smoa.num_experts
    assert usage.shape == (2, E)
    torch.testing.assert_close(usage.sum(1), torch.ones(2))
    torch.testing.assert_close(expert_usage(model, since_reset=False), usage)  # same batch twice
    choices = routing_choices(model)
    heads = model.peft_smoa.num_heads
    base_tokens = 17  # CLS + 16 patches / groups
    assert choices[0].shape == (4, base_tokens, heads) and choices[1].shape == (4, base_tokens + 1, heads)
    counts = torch.bincount(choices[1].reshape(-1), minlength=E).float()
    torch.testing.assert_close(usage[1], counts / counts.sum())
    reset_expert_usage(model)
    assert expert_usage(model).sum() == 0 and routing_choices(model) == {}


def test_prompts_accumulate_inside_and_never_reach_the_head() -> None:
    model = get_peft_model(tiny_point(depth=4), {"type": "adapterx"})
    lengths: list[int] = []
    for block in model.blocks.blocks:
        block.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    inputs, _ = make_batch("point")
    feats = model.eval().forward_features(inputs)
    assert lengths == [17, 18, 19, 20]  # one prompt per block 0..L-2
    assert feats.shape == (4, 17, 64)  # prompts stripped before the final norm / pooling
    pgs = [b.prompt_generator is not None for b in smoa_blocks(model)]
    assert pgs == [True, True, True, False]  # the last block's prompt could never be seen


def test_prompt_generator_formula_and_gelu_flag() -> None:
    for gelu in (False, True):
        pool = build_smoa_pool(16, XOptions(num_experts=2, num_heads=2, bottleneck=4, pg_gelu=gelu))
        _randomise(pool)
        block = SMoABlock(pool, 0, pool.opts)
        _randomise(block.prompt_generator, seed=1)
        x = torch.randn(2, 5, 16)
        y = block(x)
        out = block.append_prompt(nn.Identity(), (x,), x)
        pg = block.prompt_generator
        act = F.gelu(y) if gelu else y
        torch.testing.assert_close(out[:, -1], pg.gamma * act.mean(1) + pg.beta)
        torch.testing.assert_close(out[:, :-1], x)


@pytest.mark.parametrize("merge_proj", [False, True])
def test_no_prompt_generator_keeps_output_at_init(merge_proj: bool) -> None:
    base = tiny_point()
    cfg = {"type": "adapterx", "prompt_generator": False, "merge_proj": merge_proj}
    model = get_peft_model(copy.deepcopy(base), cfg)
    inputs, _ = make_batch("point")
    torch.testing.assert_close(eval_logits(model, inputs), eval_logits(base, inputs), rtol=0, atol=1e-6)


def test_block_norms_train_and_norm1_stays_frozen() -> None:
    model = get_peft_model(tiny_point(), {"type": "adapterx"})
    for block in model.blocks.blocks:
        assert all(p.requires_grad for p in block.norm2.parameters())
        assert not any(p.requires_grad for p in block.norm1.parameters())
    off = get_peft_model(tiny_point(), {"type": "adapterx", "train_block_norm": False})
    assert not any(p.requires_grad for b in off.blocks.blocks for p in b.norm2.parameters())


def test_training_forward_returns_summed_balance_loss() -> None:
    model = get_peft_model(tiny_point(), {"type": "adapterx", "balance_loss_weight": 0.1})
    inputs, _ = make_batch("point")
    model.train()
    _, aux = training_forward(model, inputs)
    per_block = [b.aux_losses()["balance_loss"] for b in smoa_blocks(model)]
    torch.testing.assert_close(aux["balance_loss"], sum(per_block))
    assert all(0.0 < v.item() <= 0.1 * model.peft_smoa.num_experts for v in per_block)


def test_presets_and_overrides_resolve() -> None:
    model = get_peft_model(tiny_point(), {"type": "adapterx", "num_experts": 3, "bottleneck": 5})
    o = model.peft_smoa.opts
    assert (o.num_experts, o.num_heads, o.bottleneck) == (3, 2, 5)
    assert model.peft_smoa.experts.w_down.shape == (3, 32, 5)
    assert model.peft_config.num_experts == 3 and model.peft_config.num_heads is None  # the config stays as given


@pytest.mark.parametrize(("cfg", "field"), [
    ({"num_heads": 3}, "num_heads"),
    ({"router": "global"}, "router"),
    ({"num_experts": 0}, "num_experts"),
    ({"preset": "huge"}, "preset"),
    ({"temperature_init": 0.001}, "temperature_init"),
    ({"position": "before"}, "position"),
])
def test_bad_options_raise_config_error_naming_the_field(cfg: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        get_peft_model(tiny_point(), {"type": "adapterx", **cfg})


def test_x_mode_reuses_the_adapterx_layers() -> None:
    for name, position in (("adapter", "sequential"), ("adaptformer", "parallel")):
        model = get_peft_model(build_backbone("vit"), {"type": name, "x_mode": True, "x": {"num_experts": 4}})
        assert isinstance(model.peft_smoa, SMoA) and model.peft_smoa.num_experts == 4
        assert model.peft_smoa.opts.position == position
        assert not any(isinstance(m, Bottleneck) for m in model.modules())
        assert all(p.requires_grad for b in model.blocks for p in b.norm2.parameters())
    af = get_peft_model(build_backbone("vit"), {"type": "adaptformer", "x_mode": True})
    assert af.peft_smoa.experts.scale == pytest.approx(0.1)  # AdaptFormer-X keeps AdaptFormer's scale
    with pytest.raises(ConfigError, match="x_mode"):
        get_peft_model(build_backbone("vit"), {"type": "adapter", "x": {"num_experts": 4}})
    with pytest.raises(ConfigError, match="x.bogus"):
        get_peft_model(build_backbone("vit"), {"type": "adapter", "x_mode": True, "x": {"bogus": 1}})


def test_sequential_position_runs_on_the_ffn_output() -> None:
    model = get_peft_model(tiny_point(), {"type": "adapter", "x_mode": True, "x": {"prompt_generator": False}})
    _randomise(model.peft_smoa)
    block = model.blocks.blocks[0]
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        got = block.mlp(x)
        ffn = block.mlp.fc2(block.mlp.act(block.mlp.fc1(x)))
        res = model.peft_smoa(ffn)
    torch.testing.assert_close(got, ffn + res.out)


def test_attach_smoa_api_for_other_methods() -> None:
    from pointpeft.peft import describe_backbone

    model = tiny_point()
    spec = describe_backbone(model)
    handles = attach_smoa(model, spec, XOptions(prompt_generator=False), position="parallel")
    assert [h.block_index for h in handles] == [0, 1]
    assert all(b.mlp.peft_adapter is h for b, h in zip(spec.blocks, handles))
    with pytest.raises(ValueError, match="already has a shared SMoA"):
        attach_smoa(model, spec, XOptions())


def test_save_load_and_pickle_keep_the_pool_shared(tmp_path) -> None:
    model = get_peft_model(tiny_point(), {"type": "adapterx", "router": "per_block"})
    inputs, labels = make_batch("point")
    model.train()
    loss_of(model, inputs, labels).backward()
    clone = pickle.loads(pickle.dumps(model))
    assert all(b.pool is clone.peft_smoa for b in smoa_blocks(clone))
    _randomise(model.peft_smoa)
    save_adapter(model, tmp_path)
    fresh = load_adapter(tiny_point(), tmp_path)
    torch.testing.assert_close(eval_logits(fresh, inputs), eval_logits(model, inputs), rtol=0, atol=1e-6)
    assert all(b.pool is fresh.peft_smoa for b in smoa_blocks(fresh))


def test_budget_presets_on_full_size_backbones() -> None:
    """The documented arithmetic: Point-MAE (40 classes) 1.90% trainable, ViT-B/16 0.166M without the head."""
    from pointpeft.models.point_transformer import build_point_transformer
    from pointpeft.peft import trainable_parameter_report

    pm = get_peft_model(build_point_transformer("point_mae", num_classes=40), {"type": "adapterx"})
    r = trainable_parameter_report(pm)
    assert r["trainable"] == 421_993 and r["total"] == 22_237_801
    assert 1.80 < r["percent"] < 1.95
