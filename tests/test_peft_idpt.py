"""IDPT: EdgeConv (kNN in feature space) prompt module; the prompt depends on the instance, not on token order."""

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
from pointpeft.peft import describe_backbone, get_peft_model
from pointpeft.peft.idpt import DynamicPromptModule, edge_features, knn_indices

pytestmark = pytest.mark.usefixtures("single_thread")


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
