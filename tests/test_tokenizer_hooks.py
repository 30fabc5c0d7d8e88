"""The point transformer's tokenizer hooks: the extension point through which methods read the patch centres and the
input clouds, or append tokens (with positions) that run through every block and are pooled with the patches."""

from __future__ import annotations

import dataclasses

import torch
from peft_cases import tiny_point

from pointpeft.models.point_transformer import TokenizerOutput
from pointpeft.models.tokenizer import Group


def test_a_reading_hook_sees_this_forwards_centres_and_clouds_and_changes_nothing() -> None:
    model = tiny_point().eval()
    x = torch.rand(2, 64, 3)
    before = model(x)
    seen: list[TokenizerOutput] = []
    handle = model.register_tokenizer_hook(lambda m, out: seen.append(out))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    tokens, centres, pos = model.tokenize(x)
    assert seen[0].points is x
    torch.testing.assert_close(seen[0].centers, centres)
    torch.testing.assert_close(seen[0].tokens, tokens)
    handle.remove()
    model(x)
    assert len(seen) == 1


def test_appended_tokens_get_their_position_before_every_block_and_are_pooled() -> None:
    model = tiny_point().eval()
    x = torch.rand(2, 64, 3)
    extra_tok, extra_pos = torch.randn(2, 3, 64), torch.randn(2, 3, 64)

    def append(m, out: TokenizerOutput) -> TokenizerOutput:
        return dataclasses.replace(out, tokens=torch.cat([out.tokens, extra_tok], 1),
                                   pos=torch.cat([out.pos, extra_pos], 1))

    inputs: list[torch.Tensor] = []
    for block in model.blocks.blocks:
        block.register_forward_pre_hook(lambda b, a: inputs.append(a[0]))
    model.register_tokenizer_hook(append)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 16 + 3, 64)
    torch.testing.assert_close(inputs[0][:, -3:], extra_tok + extra_pos)  # the position is added before block 0 ...
    # ... and before block 1, on top of block 0's output
    assert not torch.allclose(inputs[1][:, -3:], model.blocks.blocks[0](inputs[0])[:, -3:])
    torch.testing.assert_close(inputs[1][:, -3:], model.blocks.blocks[0](inputs[0])[:, -3:] + extra_pos)
    pooled = model.pool(feats)
    torch.testing.assert_close(pooled[:, 64:], feats[:, 1:].max(dim=1).values)  # Point-MAE's x[:, 1:].max


def test_tokenize_with_another_grouping() -> None:
    model = tiny_point()
    tokens, centres, pos = model.tokenize(torch.rand(2, 64, 3), group=Group(8, 16))
    assert tokens.shape == (2, 8, 64) and centres.shape == (2, 8, 3) and pos.shape == (2, 8, 64)
