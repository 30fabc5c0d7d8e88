"""VPT-deep: prompts per block replacing the previous block's, stripped before the head; VPT's init."""

from __future__ import annotations

import math

import pytest
import torch
from peft_cases import build_backbone, make_batch, single_thread, tiny_point  # noqa: F401  (fixture)

from pointpeft.errors import ConfigError
from pointpeft.peft import get_peft_model, trainable_parameter_report
from pointpeft.peft.vpt import BlockPrompts

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("kind", ["point", "vit"])
def test_each_block_sees_its_own_prompts_only(kind: str) -> None:
    model = get_peft_model(build_backbone(kind, depth=3), {"type": "vpt_deep", "num_prompts": 4})
    blocks = list(model.blocks.blocks if kind == "point" else model.blocks)
    seen: list[torch.Tensor] = []
    for block in blocks:  # registered after the method's pre-hook, so it sees the block's real input
        block.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    inputs, _ = make_batch(kind)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(inputs)
    assert [s.shape[1] for s in seen] == [17 + 4] * 3  # replaced, not accumulated
    for s, block in zip(seen, blocks):
        p = block.peft_prompts
        expected = p.prompts if p.prompt_pos is None else p.prompts + p.prompt_pos  # points: IDPT's prompt positions
        torch.testing.assert_close(s[:, -4:], expected.expand(4, -1, -1))
    assert (kind == "point") == all(b.peft_prompts.prompt_pos is not None for b in blocks)
    assert feats.shape[1] == 17


def test_point_prompt_positions_are_an_option() -> None:
    """Off: the prompts join with a zero position (the earlier behaviour); ViTs have no prompt positions (VPT)."""
    with_pos = get_peft_model(tiny_point(), {"type": "vpt_deep", "num_prompts": 3})
    without = get_peft_model(tiny_point(), {"type": "vpt_deep", "num_prompts": 3, "prompt_pos": False})
    n_with = trainable_parameter_report(with_pos)["trainable"]
    assert n_with - trainable_parameter_report(without)["trainable"] == 2 * 3 * 64  # 2 blocks x 3 x D
    p = with_pos.blocks.blocks[0].peft_prompts.prompt_pos
    assert p.requires_grad and 0.01 < p.std().item() < 0.03
    with pytest.raises(ConfigError, match="prompt_pos"):
        get_peft_model(tiny_point(), {"type": "vpt_deep", "prompt_pos": "yes"})


def test_parameter_count_and_vit_uniform_init() -> None:
    model = get_peft_model(build_backbone("vit"), {"type": "vpt_deep", "num_prompts": 10})
    prompts = [m.prompts for m in model.modules() if isinstance(m, BlockPrompts)]
    assert len(prompts) == 2 and all(p.shape == (1, 10, 192) for p in prompts)
    v = math.sqrt(6.0 / (3 * 8 * 8 + 192))
    assert all(p.abs().max() <= v and p.abs().max() > v / 2 for p in prompts)
    assert trainable_parameter_report(model)["trainable"] == 2 * 10 * 192 + 192 * 5 + 5 + 192


def test_point_init_is_trunc_normal() -> None:
    model = get_peft_model(tiny_point(), {"type": "vpt_deep", "num_prompts": 20, "init_std": 0.02})
    p = model.blocks.blocks[0].peft_prompts.prompts
    assert 0.012 < p.std().item() < 0.03


def test_bad_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match="num_prompts"):
        get_peft_model(tiny_point(), {"type": "vpt_deep", "num_prompts": 0})
    with pytest.raises(ConfigError, match="init"):
        get_peft_model(tiny_point(), {"type": "vpt_deep", "init": "xavier"})


def test_prompt_counts_follow_idpt() -> None:
    """IDPT's point VPT-deep: 10 prompts for fine-tuning, 20 in its few-shot config."""
    from pathlib import Path

    from pointpeft.config import load_config
    from pointpeft.peft.vpt import VptDeepConfig

    assert VptDeepConfig().num_prompts == 10
    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "cfgs/fewshot/vpt_deep.yaml").get_path("peft.num_prompts") == 20
