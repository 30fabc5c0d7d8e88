"""PointLoRA: LoRA + shared prompt MLPs on attention, multi-scale token selection (songw-zju/PointLoRA)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_cases import build_backbone, eval_logits, loss_of, make_batch, single_thread, train_steps  # noqa: F401
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.models.point_transformer import TokenizerOutput, build_point_transformer
from pointpeft.peft import get_peft_model, load_adapter, save_adapter, training_forward
from pointpeft.peft.token_select import gather_top_k, negative_binary_entropy

pytestmark = pytest.mark.usefixtures("single_thread")
#: the tiny backbone (64-point clouds, 16 patches of 8): the first scale equals its grouping, the second does not
SCALES = [{"num_group": 16, "group_size": 8, "top_k": 4, "loss_weight": 1.0},
          {"num_group": 8, "group_size": 16, "top_k": 2, "loss_weight": 0.25}]
TINY = {"type": "pointlora", "scales": SCALES}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_count_on_point_mae_is_the_papers_share() -> None:
    """772,752 trainable on ScanObjectNN (15 classes, 128 patches): 3.43% of the model, the paper's figure."""
    model = get_peft_model(build_point_transformer("point_mae", num_classes=15, num_group=128), {"type": "pointlora"})
    trainable, total = _trainable(model), sum(p.numel() for p in model.parameters())
    assert trainable == 221_184 + 125_312 + 74_113 + 33_792 + 50_048 + 768 + 267_535 == 772_752
    assert round(100 * trainable / total, 2) == 3.43


def test_what_trains_is_the_released_part_pointlora() -> None:
    model = get_peft_model(build_backbone("point"), TINY)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    tokenizer = {n for n in trained if n.startswith(("encoder.", "pos_embed."))}
    assert tokenizer and all(n.startswith(("encoder.first_conv.", "pos_embed.")) for n in tokenizer)
    assert not any(n.startswith("encoder.second_conv.") for n in trained)
    assert not any(n.startswith("blocks.") and n.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight"))
                   for n in trained)
    assert sum(n.endswith(("lora_A", "lora_B")) for n in trained) == 2 * 2 * 2  # blocks x (qkv, proj) x (A, B)
    x, y = make_batch("point")
    model.train()
    loss_of(model, x, y).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_selected_tokens_are_appended_with_positions_and_pooled() -> None:
    model = get_peft_model(build_backbone("point"), TINY).eval()
    x = make_batch("point")[0]
    feats = model.forward_features(x)
    assert feats.shape[1] == 1 + 16 + 4 + 2
    assert model._num_pooled_tokens == 16 + 6  # the max pool covers the selected tokens, as x[:, 1:].max releases
    # the appended tokens are the top-scored tokens of each scale, with their own position embeddings
    sel = model.peft_pointlora.selector
    tokens, centres, pos = model.tokenize(x)
    out = sel.tokenizer_hook(model, TokenizerOutput(points=x, centers=centres, tokens=tokens, pos=pos))
    t2, _, p2 = model.tokenize(x, group=sel.groupers[1])
    top1 = gather_top_k(sel.scorer(tokens), 4, tokens, pos)
    top2 = gather_top_k(sel.scorer(t2), 2, t2, p2)
    torch.testing.assert_close(out.tokens, torch.cat([tokens, top1[0], top2[0]], dim=1))
    torch.testing.assert_close(out.pos, torch.cat([pos, top1[1], top2[1]], dim=1))


def test_reusing_the_base_grouping_gives_the_same_outputs() -> None:
    a = get_peft_model(build_backbone("point"), TINY)
    b = get_peft_model(build_backbone("point"), {**TINY, "reuse_base_tokens": False})
    b.load_state_dict(a.state_dict())
    x = make_batch("point")[0]
    torch.testing.assert_close(eval_logits(a, x), eval_logits(b, x), rtol=1e-5, atol=1e-6)


def test_the_scorer_learns_only_from_the_entropy_term() -> None:
    """top-k is not differentiable: without the auxiliary term the scorer gets no gradient (as released)."""
    x, y = make_batch("point")
    for weight, expect_grad in ((0.0, False), (0.004, True)):
        model = get_peft_model(build_backbone("point"), {**TINY, "mask_loss_weight": weight}).train()
        logits, aux = training_forward(model, x)
        assert ("token_select" in aux) == expect_grad
        (nn.functional.cross_entropy(logits, y) + sum(aux.values())).backward()
        grads = [p.grad for p in model.peft_pointlora.selector.scorer.parameters()]
        assert all((g is not None) == expect_grad for g in grads)
    sel = model.peft_pointlora.selector
    tokens = model.tokenize(x)[0]
    t2 = model.tokenize(x, group=sel.groupers[1])[0]
    expected = 0.004 * (negative_binary_entropy(sel.scorer(tokens)) + 0.25 * negative_binary_entropy(sel.scorer(t2)))
    model.eval()
    model(x)
    torch.testing.assert_close(aux["token_select"].detach(), expected.detach(), rtol=1e-4, atol=1e-7)


def test_prompt_mlps_are_shared_by_every_block_and_saved_once(tmp_path) -> None:
    model = get_peft_model(build_backbone("point"), TINY)
    shared = {id(b.attn.qkv.peft_adapter._prompt[0]) for b in model.blocks.blocks}
    assert shared == {id(model.peft_pointlora.prompt_linear["qkv"])}
    x, y = make_batch("point")
    train_steps(model, x, y, steps=2)
    save_adapter(model, tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert sum("prompt_linear.qkv.0.weight" in k for k in saved) == 1
    assert "encoder.first_conv.1.running_mean" in saved  # the trainable BatchNorm's statistics travel too
    fresh = load_adapter(build_backbone("point"), tmp_path)
    torch.testing.assert_close(eval_logits(fresh, x), eval_logits(model, x), rtol=0, atol=1e-6)
    clone = copy.deepcopy(model)
    assert clone.blocks.blocks[1].attn.qkv.peft_adapter._prompt[0] is clone.peft_pointlora.prompt_linear["qkv"]


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="pointlora.*input clouds"):
        get_peft_model(build_backbone("vit"), TINY)
    with pytest.raises(ConfigError, match="top_k"):
        get_peft_model(build_backbone("point"), {"type": "pointlora", "scales": [{"num_group": 4, "group_size": 8,
                                                                                   "top_k": 5}]})
    with pytest.raises(ConfigError, match="scales: unknown key"):
        get_peft_model(build_backbone("point"), {"type": "pointlora", "scales": [{"groups": 4}]})
    with pytest.raises(ConfigError, match="mask_loss_weight"):
        get_peft_model(build_backbone("point"), {**TINY, "mask_loss_weight": -1})


def test_token_prompts_go_to_the_patch_rows_and_the_selected_rows() -> None:
    """Before each block: patches += prompt_patch(patches), selected += prompt_selected(selected); CLS and anything
    after the selected tokens unchanged (the released x[:, 1:129] / x[:, -40:] with the model's G and K)."""
    mods = get_peft_model(build_backbone("point"), TINY).peft_pointlora
    x = torch.randn(2, 1 + 16 + 6 + 3, 64)
    (y,) = mods.before_block(None, (x,))
    torch.testing.assert_close(y[:, 0], x[:, 0])
    torch.testing.assert_close(y[:, 1:17], x[:, 1:17] + mods.prompt_patch(x[:, 1:17]))
    torch.testing.assert_close(y[:, 17:23], x[:, 17:23] + mods.prompt_selected(x[:, 17:23]))
    torch.testing.assert_close(y[:, 23:], x[:, 23:])


def test_a_point_hook_runs_once_and_every_scale_groups_the_hooked_cloud() -> None:
    """The extra scales regroup the cloud the tokenizer saw (after the point hooks), without running them again."""
    model = get_peft_model(build_backbone("point"), {**TINY, "reuse_base_tokens": False}).eval()
    calls, seen = [], []

    def shift(m: nn.Module, pts: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return pts + 0.5

    model.register_point_hook(shift)
    model.register_tokenizer_hook(lambda m, out: seen.append(out.points))
    x = make_batch("point")[0]
    with torch.no_grad():
        model.forward_features(x)
    assert len(calls) == 1
    torch.testing.assert_close(seen[0], x + 0.5)
    ref_tokens, _, _ = model.embed_points(x + 0.5, group=model.peft_pointlora.selector.groupers[1])
    got_tokens, _, _ = model.tokenize(x, group=model.peft_pointlora.selector.groupers[1])
    torch.testing.assert_close(got_tokens, ref_tokens)
    assert len(calls) == 2  # tokenize (the public API) runs the hooks; embed_points does not
