"""Every parameter a method injects trains, and every frozen one stays bit-identical — through the project's
Trainer, its ``build_optimizer``/``param_groups`` and its schedule, not a test-built optimiser (peft's
``test_only_params_are_updated``). Every registered method joins automatically; a method whose parameter cannot
move in these steps must say why in ``CANNOT_MOVE`` below (no blanket skip)."""

from __future__ import annotations

import re

import pytest
import torch
from engine_cases import REPO, tiny_config
from peft_cases import method_config, registered_methods
from torch import nn

from pointpeft.engine import Trainer
from pointpeft.peft import unwrap
from pointpeft.registry import MODELS

SYNTH_LINEAR = REPO / "cfgs" / "finetune" / "synthetic" / "linear.yaml"
#: 2 epochs x 3 steps at a constant-after-step-0 learning rate: a zero-initialised up-projection moves at step 1,
#: its partner (zero gradient at step 1) at step 2; MoSA draws a module per step, so 6 steps leave each of its
#: modules undrawn with probability (3/4)^6 ~ 0.18 per block: the seed is fixed and the test checks the elements
#: the method itself marks as its trained ones
STEPS = ["train.epochs=2", "train.max_steps_per_epoch=3", "scheduler.warmup_epochs=0", "optimizer.lr=1e-3",
         "scheduler.min_lr=1e-3", "train.amp=fp32", "train.progress=off", "train.threads=1", "data.train.npoints=256"]
#: method label -> {regular expression on a parameter name: why it may stay unchanged in STEPS}. Empty: every
#: trainable parameter of every method moves.
CANNOT_MOVE: dict[str, dict[str, str]] = {
    # block 1 is point_mae_tiny's last block: DAPT makes an internal prompt in every block, the last one too (the
    # official state dict has its tfts_*_3), but no later block reads it and the default pool (cls, patch_max)
    # does not either, so it gets no gradient, as in the official code with its ModelNet40 pooling
    "dapt": {r"^blocks\.blocks\.1\.mlp\.peft_adapter\.prompt_generator\.": "last block's prompt is never read"},
}
METHODS = [(name, method_config(name)) for name in registered_methods()]


def _is_norm_owned(model: nn.Module) -> set[str]:
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return {f"{m}.{n}" if m else n for m, mod in model.named_modules() if isinstance(mod, norms)
            for n, _ in mod.named_parameters(recurse=False)}


def _no_decay_role(name: str, p: torch.Tensor, norm_owned: set[str]) -> str | None:
    """What the recipe never decays (Point-MAE / DAPT ``add_weight_decay``: 1-D tensors, ``.bias``, names with
    ``token``; norms by their module, whatever the shape). ``cls_pos`` is a weight there and stays one here."""
    leaf = name.rsplit(".", 1)[-1]
    if name in norm_owned:
        return "norm"
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias"
    if leaf == "cls_token":
        return "token"
    if p.ndim <= 1:
        return "1-D"
    return None


@pytest.fixture(scope="module")
def base_names() -> set[str]:
    cfg = tiny_config(SYNTH_LINEAR, STEPS)
    return {n for n, _ in MODELS.build(dict(cfg["model"])).named_parameters()}


@pytest.mark.parametrize(("label", "peft"), METHODS, ids=[m for m, _ in METHODS])
def test_trainer_updates_every_trainable_parameter_and_no_frozen_one(label: str, peft: dict,
                                                                     base_names: set[str]) -> None:
    cfg = tiny_config(SYNTH_LINEAR, STEPS)
    cfg["peft"] = peft
    cfg["data"]["val"] = None  # no evaluation: only the updates matter here
    torch.set_num_threads(1)
    t = Trainer(cfg, None)
    model = unwrap(t.model)
    named = dict(model.named_parameters())
    injected = {n for n in named if n not in base_names}
    frozen_injected = sorted(n for n in injected if not named[n].requires_grad)
    assert not frozen_injected, (f"{label}: injected parameters are frozen after get_peft_model: "
                                 f"{frozen_injected[:5]}")

    # the optimiser holds exactly the trainable parameters, with the decay rule by role
    in_groups = {id(p): g["weight_decay"] for g in t.optimizer.param_groups for p in g["params"]}
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert {id(named[n]) for n in trainable} == set(in_groups), f"{label}: optimizer groups != trainable set"
    norm_owned = _is_norm_owned(model)
    decayed_wrongly = [(n, role) for n in trainable if (role := _no_decay_role(n, named[n], norm_owned))
                       and in_groups[id(named[n])] != 0.0]
    assert not decayed_wrongly, f"{label}: weight decay on {decayed_wrongly[:5]}"

    before = {n: p.detach().clone() for n, p in named.items()}
    t.fit()
    assert t.global_step == 6
    state_ids = set(map(id, t.optimizer.state))
    assert all(named[n].requires_grad for n in named if id(named[n]) in state_ids)
    frozen_moved = [n for n, p in named.items() if not p.requires_grad and not torch.equal(p, before[n])]
    assert not frozen_moved, f"{label}: frozen parameters changed: {frozen_moved[:5]}"
    allowed = CANNOT_MOVE.get(label, {})
    still = [n for n in sorted(trainable) if torch.equal(named[n], before[n])
             and not any(re.search(rx, n) for rx in allowed)]
    assert not still, (f"{label}: trainable parameters unchanged after {t.global_step} trainer steps: {still[:8]}"
                       f" (injected: {sorted(set(still) & injected)[:8]}). If this is legitimate, add the name "
                       "pattern with its reason to CANNOT_MOVE in tests/test_params_update.py")
    unchanged = [n for n in trainable if torch.equal(named[n], before[n])]
    stale = [rx for rx in allowed if not any(re.search(rx, n) for n in unchanged)]
    assert not stale, f"{label}: CANNOT_MOVE entries no longer needed (every match moved): {stale}"
    no_state = [n for n in trainable if id(named[n]) not in state_ids]
    assert not no_state, f"{label}: trainable parameters the optimizer never stepped: {no_state[:5]}"
