"""Which methods leave the model's output unchanged right after injection, and which cannot (and why).

The expectation is this table, not the method's own declaration, so a method cannot opt out by omission: a
registered method (or ``x_mode`` variant) missing from ``INIT_OUTPUT`` fails ``test_every_method_is_in_the_table``.
Both answers are checked: "unchanged" to 1e-6, "changes" by more than that (so a table entry cannot hide a method
that silently does nothing)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_cases import BACKBONES, build_backbone, eval_logits, method_variants, single_thread  # noqa: F401

from pointpeft.errors import ConfigError
from pointpeft.peft import get_peft_model

pytestmark = pytest.mark.usefixtures("single_thread")
POINT = ("point",)
_X = "the SMoA's experts start at zero, but its prompt generator appends a token (gamma * mean + beta, beta ~ " \
     "N(0, 0.02), non-zero by design: docs/design-notes.md) that the later blocks attend to"
#: label -> (output unchanged at initialisation, why, backbones it supports: the others must refuse it)
INIT_OUTPUT: dict[str, tuple[bool, str, tuple[str, ...]]] = {
    "full": (True, "injects nothing: the model is the backbone", BACKBONES),
    "linear": (True, "injects nothing; only the existing head trains", BACKBONES),
    "adapter": (True, "the up-projection starts at zero, so the adapter adds 0", BACKBONES),
    "adaptformer": (True, "the up-projection starts at zero (AdaptFormer's init), so the branch adds 0", BACKBONES),
    "lora": (True, "B starts at zero: W + BA = W", BACKBONES),
    "mosa": (True, "every module's up-projection starts at zero", BACKBONES),
    "mhr": (True, "every inventory B starts at zero", BACKBONES),
    "pointgst": (True, "the spectral adapter's up-projection starts at zero", POINT),
    "adapterx": (False, _X, BACKBONES),
    "adapter+x": (False, _X, BACKBONES),
    "adaptformer+x": (False, _X, BACKBONES),
    "dapt+x": (False, _X, BACKBONES),
    "dapt": (False, "SSF starts at N(1, 0.02) / N(0, 0.02) (DAPT's init_tfts), the position embedding is added once "
                    "and internal prompts join attention", BACKBONES),
    "idpt": (False, "the instance-aware prompt token takes part in attention from the first step", BACKBONES),
    "vpt_deep": (False, "the prompts take part in attention from the first step", BACKBONES),
    "gaprompt": (False, "the point-prompt shift, the adapters and the new head change the output at once", POINT),
    "pointlora": (False, "the selected multi-scale tokens join the sequence and the patch max-pool", POINT),
}
VARIANTS = method_variants()
CASES = [(label, cfg, b) for label, cfg in VARIANTS for b in BACKBONES]


def _inputs(kind: str) -> torch.Tensor:
    """128-point clouds (the tiny tokenizer's 16 x 8 patches need at least 128 for token selection) or images."""
    g = torch.Generator().manual_seed(5)
    return torch.randn((4, 128, 3) if kind == "point" else (4, 3, 32, 32), generator=g)


def test_every_method_is_in_the_table() -> None:
    labels = [label for label, _ in VARIANTS]
    missing = [label for label in labels if label not in INIT_OUTPUT]
    assert not missing, (f"methods without an init-output expectation: {missing}. Add `label: (unchanged, why, "
                         "backbones)` to INIT_OUTPUT in tests/test_init_output.py after measuring the logits")
    stale = sorted(set(INIT_OUTPUT) - set(labels))
    assert not stale, f"INIT_OUTPUT names methods that are not registered: {stale}"


@pytest.mark.parametrize(("label", "cfg", "kind"), CASES, ids=[f"{lb}-{k}" for lb, _, k in CASES])
def test_output_at_initialisation_is_as_the_table_says(label: str, cfg: dict, kind: str) -> None:
    if label not in INIT_OUTPUT:
        pytest.fail(f"{label} is not in INIT_OUTPUT (see test_every_method_is_in_the_table)")
    unchanged, why, backbones = INIT_OUTPUT[label]
    base = build_backbone(kind)
    if kind not in backbones:
        with pytest.raises(ConfigError, match=cfg["type"]):
            get_peft_model(copy.deepcopy(base), cfg)
        return
    model = get_peft_model(copy.deepcopy(base), cfg)
    x = _inputs(kind)
    diff = float((eval_logits(model, x) - eval_logits(base, x)).abs().max())
    if unchanged:
        assert diff <= 1e-6, f"{label} must leave the output unchanged at init ({why}); max |diff| = {diff:.3g}"
    else:
        assert diff > 1e-6, f"{label} is listed as changing the output at init ({why}) but the logits are equal"
