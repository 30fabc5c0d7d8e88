"""DAPT: the official model's logits (an independent reference forward), dynamic adapter, SSF, prompts; DAPT-X."""

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
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft import describe_backbone, get_peft_model
from pointpeft.peft.adapterx import SMoABlock
from pointpeft.peft.dapt import DynamicAdapter, Ssf

pytestmark = pytest.mark.usefixtures("single_thread")

#: the pooling of DAPT's three configs: ModelNet40, ScanObjectNN OBJ_BG / PB_T50_RS, OBJ_ONLY
OFFICIAL_POOLS = (["cls", "patch_max"], ["cls", "prompt_mean", "patch_max"], ["cls", "prompt_mean"])


def _perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every trainable tensor moved off its initial value (zero up-projections too), so every path counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _ssf(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return y * module.peft_ssf.gamma + module.peft_ssf.beta


def _ln(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _lin(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, lin.weight, lin.bias)


@torch.no_grad()
def dapt_reference(model: nn.Module, pts: torch.Tensor, pool: list[str]) -> torch.Tensor:
    """What LMD0311/DAPT models/DAPT.py ``PointTransformer_DAPT.forward`` computes (eval mode), written out with
    plain tensor ops on the injected model's weights: tokenizer SSF, position embedding added ONCE, per block
    SSF'd attention, FFN + dynamic adapter, the prompt inserted right after CLS, SSF'd final norm, and the head on
    CLS / the prompts' mean (``x[:, 1:-G]``) / the patch max (``x[:, -G:]``)."""
    neighborhood, center = model.group_divider(pts)
    tokens = model.encoder(neighborhood)
    tokens = tokens * model.peft_token_ssf.gamma + model.peft_token_ssf.beta
    B, G, D = tokens.shape
    x = torch.cat([model.cls_token.expand(B, -1, -1), tokens], dim=1)
    x = x + torch.cat([model.cls_pos.expand(B, -1, -1), model.pos_embed(center)], dim=1)
    for blk in model.blocks.blocks:
        attn = blk.attn
        h = _ssf(blk.norm1, _ln(blk.norm1, x))
        q, k, v = _ssf(attn.qkv, _lin(attn.qkv, h)).reshape(B, x.shape[1], 3, attn.num_heads, -1).permute(
            2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1) @ v
        x = x + _ssf(attn.proj, _lin(attn.proj, a.transpose(1, 2).reshape(B, x.shape[1], D)))
        z = _ssf(blk.norm2, _ln(blk.norm2, x))
        ad = blk.mlp.peft_adapter
        zn = _ln(ad.norm, z)
        adapter_out = _lin(ad.up, F.gelu(_lin(ad.down, zn))) * F.relu(_lin(ad.scale, zn))
        ffn = _ssf(blk.mlp.fc2, _lin(blk.mlp.fc2, F.gelu(_ssf(blk.mlp.fc1, _lin(blk.mlp.fc1, z)))))
        x = x + ffn + adapter_out
        pg = ad.prompt_generator
        prompt = F.gelu(adapter_out).mean(dim=1, keepdim=True) * pg.gamma + pg.beta
        x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
    x = _ssf(model.norm, _ln(model.norm, x))
    feats = {"cls": x[:, 0], "prompt_mean": x[:, 1:-G].mean(dim=1), "patch_max": x[:, -G:].max(dim=1).values}
    return model.cls_head_finetune(torch.cat([feats[name] for name in pool], dim=-1))


@pytest.mark.parametrize("pool", OFFICIAL_POOLS, ids=["modelnet40", "scan_bg_hardest", "scan_objonly"])
def test_logits_equal_the_official_forward(pool: list[str]) -> None:
    model = _perturbed(get_peft_model(build_backbone("point"), {"type": "dapt", "r": 8, "pool": pool}))
    inputs, _ = make_batch("point")
    torch.testing.assert_close(eval_logits(model, inputs), dapt_reference(model, inputs, pool), rtol=1e-5,
                               atol=1e-5)
    assert model.cls_head_finetune[0].in_features == len(pool) * describe_backbone(model).embed_dim


def test_every_block_emits_a_prompt_and_pooled_prompts_reach_the_final_norm() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "dapt", "pool": ["cls", "prompt_mean", "patch_max"]})
    spec = describe_backbone(model)
    lengths: list[int] = []
    for block in spec.blocks:
        block.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    final_in: list[torch.Tensor] = []
    spec.final_norm.register_forward_pre_hook(lambda m, args: final_in.append(args[0]))
    eval_logits(model, make_batch("point")[0])
    assert lengths == [lengths[0] + i for i in range(spec.depth)]  # block i sees the prompts of blocks 0..i-1
    assert final_in[0].shape[1] == lengths[0] + spec.depth  # the last block's prompt too
    assert all(b.mlp.peft_adapter.prompt_generator is not None for b in spec.blocks)


@pytest.mark.parametrize("kind", BACKBONES)
def test_prompts_not_pooled_are_stripped_before_the_final_norm(kind: str) -> None:
    model = get_peft_model(build_backbone(kind), "dapt")
    spec = describe_backbone(model)
    lengths: list[int] = []
    spec.blocks[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    final_in: list[torch.Tensor] = []
    spec.final_norm.register_forward_pre_hook(lambda m, args: final_in.append(args[0]))
    eval_logits(model, make_batch(kind)[0])
    assert final_in[0].shape[1] == lengths[0]


def test_position_embedding_once_is_a_backbone_switch() -> None:
    """pos_embed: once adds the position embedding before block 0 only; every_block is Point-MAE's encoder."""
    inputs, _ = make_batch("point")
    cfg = {"type": "dapt", "prompt": False, "ssf": False}
    once = get_peft_model(build_backbone("point"), cfg)
    every = get_peft_model(build_backbone("point"), {**cfg, "pos_embed": "every_block"})
    assert not once.blocks.pos_every_block and every.blocks.pos_every_block
    base = build_backbone("point")
    torch.testing.assert_close(eval_logits(every, inputs), eval_logits(base, inputs), rtol=0, atol=1e-6)
    base.set_pos_every_block(False)
    torch.testing.assert_close(eval_logits(once, inputs), eval_logits(base, inputs), rtol=0, atol=1e-6)
    assert not torch.allclose(eval_logits(once, inputs), eval_logits(every, inputs), atol=1e-4)
    with pytest.raises(ConfigError, match="every-block"):
        get_peft_model(build_backbone("vit"), {**cfg, "pos_embed": "every_block"})


def test_tokenizer_ssf_trains_behind_the_no_grad_tokenizer() -> None:
    model = get_peft_model(build_backbone("point"), "dapt")
    inputs, labels = make_batch("point")
    model.train()
    F.cross_entropy(model(inputs), labels).backward()
    ssf = model.peft_token_ssf
    assert ssf.gamma.grad is not None and ssf.gamma.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())  # nothing flows into the tokenizer


def test_ssf_init_normal_as_the_original_or_identity() -> None:
    torch.manual_seed(0)
    s = Ssf(20000)
    assert abs(s.gamma.mean().item() - 1) < 1e-3 and abs(s.gamma.std().item() - 0.02) < 1e-3
    assert abs(s.beta.mean().item()) < 1e-3 and abs(s.beta.std().item() - 0.02) < 1e-3
    ident = Ssf(8, "identity")
    assert torch.equal(ident.gamma, torch.ones(8)) and torch.equal(ident.beta, torch.zeros(8))


@pytest.mark.parametrize("kind", BACKBONES)
def test_identity_ssf_without_prompts_keeps_the_output_at_init_and_ssf_is_live(kind: str) -> None:
    base = build_backbone(kind)
    cfg = {"type": "dapt", "prompt": False, "ssf_init": "identity"}
    if kind == "point":
        cfg["pos_embed"] = "every_block"
    model = get_peft_model(copy.deepcopy(base), cfg)
    inputs, _ = make_batch(kind)
    torch.testing.assert_close(eval_logits(model, inputs), eval_logits(base, inputs), rtol=0, atol=1e-6)
    ssfs = [m for m in model.modules() if isinstance(m, Ssf)]
    assert len(ssfs) == 6 * describe_backbone(model).depth + 2  # 6 per block, tokenizer output, final norm
    with torch.no_grad():
        describe_backbone(model).blocks[0].attn.qkv.peft_ssf.gamma.mul_(1.5)
    assert not torch.allclose(eval_logits(model, inputs), eval_logits(base, inputs), atol=1e-4)


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
    # block 1 gets block 0's output as it is: the position embedding was added once, before block 0
    torch.testing.assert_close(block1_in[0][:, -1], expected, rtol=1e-5, atol=1e-6)


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
    assert not model.blocks.pos_every_block  # DAPT's backbone layout stays in x_mode
    ax = get_peft_model(build_backbone("point"), "adapterx")
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == sum(p.numel() for p in ax.parameters() if p.requires_grad)
    with_ssf = get_peft_model(build_backbone("point"), {"type": "dapt", "x_mode": True, "ssf": True})
    assert sum(isinstance(m, Ssf) for m in with_ssf.modules()) > 0
    pooled = get_peft_model(build_backbone("point"), {"type": "dapt", "x_mode": True,
                                                      "pool": ["cls", "prompt_mean", "patch_max"]})
    assert all(m.prompt_generator is not None for m in pooled.modules() if isinstance(m, SMoABlock))


@pytest.mark.parametrize(("node", "field"), [({"r": 0}, "r"), ({"ssf": "yes"}, "ssf"), ({"dropout": 1.0}, "dropout"),
                                             ({"x": {"num_experts": 2}}, "x_mode"),
                                             ({"x_mode": True, "x": {"bogus": 1}}, "x.bogus"),
                                             ({"ssf_init": "zeros"}, "ssf_init"), ({"pos_embed": "x"}, "pos_embed"),
                                             ({"pool": ["cls", "bogus"]}, "pool"),
                                             ({"prompt": False, "pool": ["prompt_mean"]}, "pool")])
def test_bad_config_names_the_field(node: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        get_peft_model(build_backbone("point"), {"type": "dapt", **node})


def test_pool_refused_clearly_where_the_backbone_has_no_pooling_option() -> None:
    with pytest.raises(ConfigError, match="pool"):
        get_peft_model(build_backbone("vit"), {"type": "dapt", "pool": ["cls", "prompt_mean"]})
    with pytest.raises(ConfigError, match="train_head"):
        get_peft_model(build_backbone("point"), {"type": "dapt", "pool": ["cls", "prompt_mean", "patch_max"],
                                                 "train_head": False})


#: DAPT's released cfgs/finetune_*_dapt.yaml: (rank, drop_adapter_rate, drop_path_rate, head pooling)
RELEASED = {"modelnet40": (72, 0.0, 0.1, None), "scanobjectnn_hardest": (64, 0.2, 0.3, OFFICIAL_POOLS[1]),
            "scanobjectnn_objbg": (64, 0.5, 0.3, OFFICIAL_POOLS[1]),
            "scanobjectnn_objonly": (64, 0.0, 0.1, OFFICIAL_POOLS[2])}


@pytest.mark.parametrize("data_set", sorted(RELEASED))
def test_shipped_leaves_carry_the_released_per_data_set_values(data_set: str) -> None:
    """DAPT's leaves carry its configs' values; DAPT-X keeps DAPT's drop path and dropout with the 2-wide head (the
    paper's 1.88% budget)."""
    from pathlib import Path

    from pointpeft.config import load_config

    root = Path(__file__).resolve().parents[1] / "cfgs" / "finetune" / data_set
    r, dropout, drop_path, pool = RELEASED[data_set]
    dapt, dapt_x = load_config(root / "dapt.yaml"), load_config(root / "dapt_x.yaml")
    assert (dapt["peft"]["r"], dapt["peft"]["dropout"], dapt["model"]["drop_path_rate"]) == (r, dropout, drop_path)
    assert dapt["peft"].get("pool") == pool
    assert dapt_x["peft"]["x_mode"] is True and dapt_x["peft"].get("pool") is None
    assert (dapt_x["peft"]["dropout"], dapt_x["model"]["drop_path_rate"]) == (dropout, drop_path)


def _dapt_name(key: str) -> str:
    """The name LMD0311/DAPT models/DAPT.py gives a tensor of our DAPT-injected model (the file's layout)."""
    sites = {"norm1": "tfts_{}_1", "norm2": "tfts_{}_2", "attn.qkv": "attn.tfts_{}_1", "attn.proj": "attn.tfts_{}_2",
             "mlp.fc1": "mlp.tfts_{}_1", "mlp.fc2": "mlp.tfts_{}_2"}
    head, _, leaf = key.rpartition(".")
    if key.startswith("peft_token_ssf."):
        return f"tfts_{leaf}_1"
    if key.startswith("norm.peft_ssf."):
        return f"tfts_{leaf}_2"
    block, _, rest = head.partition(".")[2].partition(".")[2].partition(".")  # blocks.blocks.<i>.<rest>
    block = f"blocks.blocks.{block}"
    for site, name in sites.items():
        if rest == f"{site}.peft_ssf":
            return f"{block}.{name.format(leaf)}"
    if rest == "mlp.peft_adapter.prompt_generator":
        return f"{block}.tfts_{leaf}_3"
    for ours, theirs in (("norm", "adapter_layer_norm_before"), ("scale", "scale"), ("down", "down_proj"),
                         ("up", "up_proj")):
        if rest == f"mlp.peft_adapter.{ours}":
            return f"{block}.Adapter_MLP.{theirs}.{leaf}"
    return key


def test_an_official_dapt_checkpoint_loads_into_the_injected_model(tmp_path) -> None:
    """A file in DAPT's layout ({"base_model": "module." + its names}) loads every tensor: same logits."""
    from pointpeft.models import load_pretrained
    from pointpeft.peft.dapt.official import official_state

    cfg = {"type": "dapt", "r": 8, "pool": ["cls", "prompt_mean", "patch_max"]}
    model = _perturbed(get_peft_model(build_backbone("point"), cfg))
    sd = {f"module.{_dapt_name(k)}": v for k, v in model.state_dict().items()}
    assert "module.blocks.blocks.0.Adapter_MLP.down_proj.weight" in sd and "module.tfts_gamma_1" in sd
    torch.save({"base_model": sd, "epoch": 299}, tmp_path / "ckpt-best.pth")
    fresh = get_peft_model(build_backbone("point", seed=5), cfg)
    report = load_pretrained(fresh, tmp_path / "ckpt-best.pth", convert=official_state)
    assert not report.missing_keys and not report.unexpected_keys
    inputs, _ = make_batch("point")
    torch.testing.assert_close(eval_logits(fresh, inputs), eval_logits(model, inputs), rtol=0, atol=1e-6)
