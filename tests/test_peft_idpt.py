"""IDPT: the official model's logits (an independent reference forward); EdgeConv (kNN in feature space) prompt
module; the prompt depends on the instance, not on token order; prompt_pos is fixed and travels with the adapter."""

from __future__ import annotations

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
from pointpeft.peft import describe_backbone, get_peft_model, load_adapter, save_adapter
from pointpeft.peft.idpt import DynamicPromptModule, edge_features, knn_indices

pytestmark = pytest.mark.usefixtures("single_thread")

#: IDPT's cls_type values as pools: all (its default and three of its four configs), promptonly (OBJ_BG), pointcls
CLS_TYPES = {"all": ["cls", "prompt_mean", "patch_max"], "promptonly": ["prompt_mean"],
             "pointcls": ["cls", "patch_max"]}


def _perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        prompter = describe_backbone(model).blocks[-1].peft_prompt
        prompter.prompt_pos.add_(torch.randn(prompter.prompt_pos.shape, generator=g))
    return model


@torch.no_grad()
def idpt_reference(model: torch.nn.Module, pts: torch.Tensor, cls_type: str) -> torch.Tensor:
    """What zyh16143998882/ICCV23-IDPT models/Point_MAE.py ``PointTransformer.forward`` computes (eval mode, prompt
    layer 11 = the last block): the position embedding before every block; before the last block the prompt module
    reads the patch tokens of the previous block's output (no position added), the prompt is inserted after CLS
    with ``prompt_pos``; the head reads ``cls_type``'s features of ``[CLS, prompt, patches]``."""
    neighborhood, center = model.group_divider(pts)
    tokens = model.encoder(neighborhood)
    B = tokens.shape[0]
    x = torch.cat([model.cls_token.expand(B, -1, -1), tokens], dim=1)
    pos = torch.cat([model.cls_pos.expand(B, -1, -1), model.pos_embed(center)], dim=1)
    blocks = model.blocks.blocks
    for i, blk in enumerate(blocks):
        if i == len(blocks) - 1:
            prompter = blk.peft_prompt
            prompt = prompter.module(x[:, 1:])
            x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
            pos = torch.cat([pos[:, :1], prompter.prompt_pos.expand(B, -1, -1), pos[:, 1:]], dim=1)
        x = blk.forward(x + pos)  # the plain block, without the framework's hooks
    x = model.norm(x)
    feats = {"all": [x[:, 0], x[:, 1], x[:, 2:].max(dim=1).values], "promptonly": [x[:, 1]],
             "pointcls": [x[:, 0], x[:, 2:].max(dim=1).values]}[cls_type]
    return model.cls_head_finetune(torch.cat(feats, dim=-1))


@pytest.mark.parametrize("cls_type", sorted(CLS_TYPES))
def test_logits_equal_the_official_forward(cls_type: str) -> None:
    cfg = {"type": "idpt", "k": 4} if cls_type == "all" else {"type": "idpt", "k": 4, "pool": CLS_TYPES[cls_type]}
    model = get_peft_model(build_backbone("point"), cfg)
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=1)  # the prompt module's BatchNorm statistics see data
    _perturbed(model)
    torch.testing.assert_close(eval_logits(model, inputs), idpt_reference(model, inputs, cls_type), rtol=1e-4,
                               atol=1e-4)
    width = {"all": 3, "promptonly": 1, "pointcls": 2}[cls_type]
    assert model.cls_head_finetune[0].in_features == width * describe_backbone(model).embed_dim


def test_prompt_pos_is_fixed_saved_and_restored(tmp_path) -> None:
    """The original's optimiser never updates prompt_pos (only ``cls`` names train): a fixed random buffer here,
    which the adapter file carries; ``train_prompt_pos: true`` makes it a trained parameter."""
    model = get_peft_model(build_backbone("point"), "idpt")
    prompter = describe_backbone(model).blocks[-1].peft_prompt
    assert "prompt_pos" not in dict(model.named_parameters(recurse=True)).keys()
    before = prompter.prompt_pos.clone()
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=2)
    assert torch.equal(prompter.prompt_pos, before) and before.abs().max() > 0
    expected = eval_logits(model, inputs)
    save_adapter(model, tmp_path)
    fresh = build_backbone("point")
    torch.manual_seed(99)  # a different random prompt_pos at injection; the file's must win
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(eval_logits(fresh, inputs), expected, rtol=0, atol=1e-6)
    trained = get_peft_model(build_backbone("point"), {"type": "idpt", "train_prompt_pos": True})
    assert describe_backbone(trained).blocks[-1].peft_prompt.prompt_pos.requires_grad


def _capture_prompts(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(prompt module outputs, prompt module inputs) of every forward."""
    module = describe_backbone(model).blocks[-1].peft_prompt.module
    outs: list[torch.Tensor] = []
    ins: list[torch.Tensor] = []
    def record(m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        ins.append(args[0])
        outs.append(out)

    module.register_forward_hook(record)
    return outs, ins


@pytest.mark.parametrize("kind", BACKBONES)
def test_prompt_depends_on_the_instance_and_sits_before_the_last_block(kind: str) -> None:
    model = get_peft_model(build_backbone(kind), "idpt")
    inputs, labels = make_batch(kind)
    train_steps(model, inputs, labels, steps=1)  # BatchNorm statistics of the prompt module see data
    outs, ins = _capture_prompts(model)
    spec = describe_backbone(model)
    lengths: list[int] = []
    for block in spec.blocks:
        block.norm1.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    logits = eval_logits(model, inputs)
    prompt = outs[0]
    assert prompt.shape == (inputs.shape[0], 1, spec.embed_dim)
    assert not torch.allclose(prompt[0], prompt[1])  # one prompt per instance
    base = lengths[0]
    assert lengths == [base] * (spec.depth - 1) + [base + 1]  # the prompt joins the last block only
    assert ins[0].shape[1] == base - model.num_prefix_tokens  # the EdgeConv sees patch tokens only
    # eval mode: an instance's prompt and logits do not depend on the rest of the batch
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(eval_logits(model, inputs[perm]), logits[perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[-1], prompt[perm], rtol=1e-5, atol=1e-5)


def test_prompt_module_is_invariant_to_token_order() -> None:
    torch.manual_seed(0)
    module = DynamicPromptModule(32, k=5, num_edgeconv=2).eval()
    tokens = torch.randn(3, 12, 32)
    perm = torch.randperm(12)
    torch.testing.assert_close(module(tokens[:, perm]), module(tokens), rtol=1e-5, atol=1e-6)
    multi = DynamicPromptModule(32, k=5, num_prompts=3).eval()
    assert multi(tokens).shape == (3, 3, 32)


def test_knn_and_edge_features_match_brute_force() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 10, 6)
    idx = knn_indices(x, 4)
    ref = torch.cdist(x, x).topk(4, dim=-1, largest=False).indices
    assert torch.equal(idx.sort(dim=-1).values, ref.sort(dim=-1).values)
    assert torch.equal(idx[..., 0], torch.arange(10).expand(2, -1))  # the nearest token is the token itself
    e = edge_features(x, 4)
    b, i, j = 1, 7, 2
    torch.testing.assert_close(e[b, i, j], torch.cat([x[b, idx[b, i, j]] - x[b, i], x[b, i]]))


def test_k_larger_than_the_tokens_is_capped_and_prompt_layer_checked() -> None:
    # k >= the 16 patch tokens: every token's neighbourhood is all of them, exactly k = 16 (the official
    # models/dgcnn.py knn() calls topk(k=20), which raises below 20 tokens; its 64/128 patches never are)
    inputs, labels = make_batch("point")
    capped, exact = (get_peft_model(build_backbone("point"), {"type": "idpt", "k": k, "prompt_layer": 0})
                     for k in (100, 16))
    for m in (capped, exact):
        torch.manual_seed(1)  # the same drop-path draws
        train_steps(m, inputs, labels, steps=1)
    torch.testing.assert_close(eval_logits(capped, inputs), eval_logits(exact, inputs), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="prompt_layer"):
        get_peft_model(build_backbone("point"), {"type": "idpt", "prompt_layer": 5})
    with pytest.raises(ConfigError, match="k must"):
        get_peft_model(build_backbone("point"), {"type": "idpt", "k": 0})


@pytest.mark.parametrize("data_set", ["modelnet40", "scanobjectnn_hardest", "scanobjectnn_objbg",
                                      "scanobjectnn_objonly"])
def test_shipped_leaves_carry_the_released_per_data_set_values(data_set: str) -> None:
    """IDPT's cfgs: cls_type all except OBJ_BG (promptonly); its runner rotates ScanObjectNN clouds about y instead
    of scaling and translating them."""
    from pathlib import Path

    from pointpeft.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "cfgs" / "finetune" / data_set / "idpt.yaml")
    assert cfg["peft"].get("pool") == (CLS_TYPES["promptonly"] if data_set == "scanobjectnn_objbg" else None)
    expected = ([{"type": "rotate_up", "axis": "y", "max_degrees": 180}] if data_set.startswith("scan")
                else [{"type": "scale_translate"}])
    assert cfg["data"]["train"]["transforms"] == expected
    assert cfg["model"]["drop_path_rate"] == 0.1


def test_an_official_idpt_checkpoint_loads_into_the_injected_model(tmp_path) -> None:
    """A file in IDPT's layout (``blocks.cls`` = DGCNNView with Conv2d/Conv1d kernels and its BatchNorms under two
    names, top-level ``prompt_pos``) loads every tensor: same logits."""
    from pointpeft.models import load_pretrained
    from pointpeft.peft.idpt.official import official_state

    model = get_peft_model(build_backbone("point"), {"type": "idpt", "k": 4})
    inputs, labels = make_batch("point")
    train_steps(model, inputs, labels, steps=1)
    _perturbed(model)
    prefix = "blocks.blocks.1.peft_prompt."
    sd = {}
    for k, v in model.state_dict().items():
        if not k.startswith(prefix):
            sd[k] = v
            continue
        rest = k[len(prefix):]
        if rest == "prompt_pos":
            sd["prompt_pos"] = v
            continue
        _, kind, *tail = rest.split(".")  # module.convs.<i>.proj.weight / module.fuse_bn.running_mean ...
        if kind == "convs":
            i, part, leaf = int(tail[0]) + 1, tail[1], tail[2]
            if part == "proj":
                sd[f"blocks.cls.conv{i}.0.{leaf}"] = v[:, :, None, None]
            else:
                sd[f"blocks.cls.conv{i}.1.{leaf}"] = sd[f"blocks.cls.bn{i}.{leaf}"] = v
        elif kind == "fuse":
            sd[f"blocks.cls.conv5.0.{tail[0]}"] = v[:, :, None]
        else:  # fuse_bn
            sd[f"blocks.cls.conv5.1.{tail[0]}"] = sd[f"blocks.cls.bn5.{tail[0]}"] = v
    torch.save({"base_model": sd}, tmp_path / "idpt.pth")
    fresh = get_peft_model(build_backbone("point", seed=5), {"type": "idpt", "k": 4})
    report = load_pretrained(fresh, tmp_path / "idpt.pth", convert=official_state)
    assert not report.missing_keys and not report.unexpected_keys
    torch.testing.assert_close(eval_logits(fresh, inputs), eval_logits(model, inputs), rtol=0, atol=1e-6)
