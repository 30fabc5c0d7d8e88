"""Weight decay by role (biases of any shape, norms, tokens, listed names) and method-declared param groups."""

from __future__ import annotations

import pytest
import torch
from peft_cases import build_backbone
from torch import nn

from pointpeft.engine.optim import build_optimizer, build_scheduler, no_decay_reason, param_groups
from pointpeft.peft import get_peft_model


def _decay_of(model: nn.Module, wd: float = 0.05) -> dict[str, float]:
    by_id = {id(p): g["weight_decay"] for g in param_groups(model, wd) for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def test_adapterx_expert_biases_are_not_decayed_although_2d() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "adapterx", "num_experts": 4})
    decay = _decay_of(model)
    biases = [n for n in decay if n.split(".")[-1] in ("b_down", "b_up")]
    weights = [n for n in decay if n.split(".")[-1] in ("w_down", "w_up")]
    assert biases and weights
    for n in biases:
        assert dict(model.named_parameters())[n].ndim == 2
        assert decay[n] == 0.0, n
    for n in weights:
        assert decay[n] == 0.05, n
    assert no_decay_reason(model)[biases[0]] == "bias"


def test_norms_tokens_and_plain_linear_weights() -> None:
    model = build_backbone("point")  # full fine-tuning: every parameter trains
    decay = _decay_of(model)
    reasons = no_decay_reason(model)
    ln = next(n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm))
    assert decay[f"{ln}.weight"] == 0.0 and reasons[f"{ln}.weight"] == "norm"
    assert decay["cls_token"] == 0.0 and reasons["cls_token"] == "listed"  # the (1, 1, D) token the model lists
    assert decay["cls_pos"] == 0.05  # Point-MAE's add_weight_decay decays cls_pos (no 'token' in its name)
    fc = next(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    assert decay[f"{fc}.weight"] == 0.05 and f"{fc}.weight" not in reasons
    assert decay[f"{fc}.bias"] == 0.0


def test_vit_tokens_are_listed_and_prompts_decay() -> None:
    model = get_peft_model(build_backbone("vit"), {"type": "vpt_deep"})
    decay = _decay_of(model)
    assert decay["cls_token"] == 0.0
    prompts = [n for n in decay if n.endswith("prompts")]
    assert prompts and all(decay[n] == 0.05 for n in prompts)  # VPT's optimiser decays its prompts


def test_submodule_no_weight_decay_is_an_extension_point() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.zeros(3, 4))
            self.w = nn.Parameter(torch.zeros(3, 4))

        def no_weight_decay(self) -> set[str]:
            return {"table"}

    model = nn.Sequential(nn.Linear(4, 4), Scaled())
    decay = _decay_of(model)
    assert decay["1.table"] == 0.0 and decay["1.w"] == 0.05 and decay["0.weight"] == 0.05


def test_mhr_routing_group_lr_and_schedule_reference() -> None:
    model = get_peft_model(build_backbone("point"), {"type": "mhr"})
    opt = build_optimizer({"type": "adamw", "lr": 1e-3, "weight_decay": 0.05}, model)
    routing = {id(p) for n, p in model.named_parameters() if n.endswith("routing")}
    assert routing
    (group,) = [g for g in opt.param_groups if {id(p) for p in g["params"]} & routing]
    assert {id(p) for p in group["params"]} == routing
    assert group["lr"] == pytest.approx(0.1) and group["weight_decay"] == 0.0
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # the reported lr is the base group's
    sched = build_scheduler({"type": "cosine", "warmup_epochs": 1, "warmup_lr": 1e-6, "min_lr": 1e-6}, opt, 2, 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6)  # warm-up starts at warmup_lr for the base group
    for _ in range(10):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert group["lr"] == pytest.approx(0.1)  # the routing group follows the same factor
