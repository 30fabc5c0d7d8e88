"""Shared cases for the PEFT tests: two tiny backbones, batches, and per-method expectations read from the methods.

Every method registered in ``pointpeft.registry.PEFT_METHODS`` joins the matrix in tests/test_peft_matrix.py
automatically. What the matrix expects of a method comes from the method object built with its default config:

``mergeable``, ``adds_tokens``, ``trains_backbone``, ``drawn_experts`` and ``families``, the extension points
``pointpeft.peft.base.PeftMethod`` declares with their defaults (and documents).

Whether the output is unchanged at initialisation is not read from the method: tests/test_init_output.py holds
that table (a method cannot opt out by omission). ``MATRIX_CONFIGS`` holds the config a method is tested with when
its defaults do not fit the tiny backbones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from pointpeft.models.point_transformer import build_point_transformer
from pointpeft.peft import build_peft_config, describe_backbone, get_peft_model, training_forward
from pointpeft.peft.base import method_for
from pointpeft.registry import PEFT_METHODS

NUM_CLASSES = 5
BACKBONES = ("point", "vit")
#: config overrides for the matrix, by method name (merged over ``{"type": name}``)
MATRIX_CONFIGS: dict[str, dict[str, Any]] = {
    "pointgst": {"local": 8},  # local graphs must divide the tiny tokenizer's 16 patches (released: 32 of 64/128)
    # token selection at scales the 64-point test clouds can hold (released: top 32 of 128 x 32, top 8 of 64 x 64)
    "pointlora": {"scales": [{"num_group": 16, "group_size": 8, "top_k": 4, "loss_weight": 1.0},
                             {"num_group": 8, "group_size": 16, "top_k": 2, "loss_weight": 0.25}]},
}
#: backbone weights no PEFT method may ever train (attention, FFN, tokenizer), as name fragments
CORE_WEIGHTS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight", "encoder.",
                "patch_embed.", "pos_embed")


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine thread contention made a
    training step up to 60x slower (5.8 s vs 0.09 s for six full fine-tuning steps); use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")`` after importing it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_point(num_classes: int = NUM_CLASSES, seed: int = 0, **overrides: Any) -> nn.Module:
    """Point-MAE tiny: 64 wide, 2 blocks, 2 heads, 16 groups x 8 points (BatchNorms in tokenizer and head)."""
    torch.manual_seed(seed)
    return build_point_transformer("point_mae_tiny", num_classes=num_classes, **overrides)


def tiny_vit(num_classes: int = NUM_CLASSES, seed: int = 0, **overrides: Any) -> nn.Module:
    """timm ViT-Tiny on 32x32 images with 8x8 patches and 2 blocks (16 patches + CLS)."""
    import timm

    torch.manual_seed(seed)
    kw = {"img_size": 32, "patch_size": 8, "depth": 2, **overrides}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **kw)


BUILDERS = {"point": tiny_point, "vit": tiny_vit}


def build_backbone(kind: str, seed: int = 0, **overrides: Any) -> nn.Module:
    return BUILDERS[kind](seed=seed, **overrides)


def make_batch(kind: str, batch: int = 4, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch (inputs, labels) for ``kind``: 64-point clouds or 3x32x32 images."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 64, 3) if kind == "point" else (batch, 3, 32, 32)
    inputs = torch.randn(shape, generator=g)
    labels = torch.arange(batch) % NUM_CLASSES
    return inputs, labels


def registered_methods() -> list[str]:
    return sorted(PEFT_METHODS.keys())


#: test backbone kind -> its ``BackboneSpec.family``
FAMILIES = {"point": "point_transformer", "vit": "timm_vit"}


def supports(config: dict[str, Any], kind: str) -> bool:
    """Whether the method injects into this backbone kind (its ``families``; None: all). The others must refuse it
    with a ConfigError (tests/test_init_output.py)."""
    families = method_for(build_peft_config(config)).families
    return families is None or FAMILIES[kind] in families


def method_config(name: str, **overrides: Any) -> dict[str, Any]:
    return {"type": name, **MATRIX_CONFIGS.get(name, {}), **overrides}


def method_variants() -> list[tuple[str, dict[str, Any]]]:
    """(label, config) of every registered method, plus ``<name>+x`` (``x_mode: true``) where the config has it."""
    import dataclasses

    out = []
    for name in registered_methods():
        out.append((name, method_config(name)))
        if "x_mode" in {f.name for f in dataclasses.fields(PEFT_METHODS.get(name).config_class)}:
            out.append((f"{name}+x", method_config(name, x_mode=True)))
    return out


@dataclass(frozen=True)
class Expectation:
    mergeable: bool
    adds_tokens: bool
    trains_backbone: tuple[str, ...]
    drawn_experts: bool = False


def expectation(config: dict[str, Any]) -> Expectation:
    """What the method promises, read from the method object built with ``config``."""
    method = method_for(build_peft_config(config))
    return Expectation(
        mergeable=bool(method.mergeable),
        adds_tokens=bool(method.adds_tokens),
        trains_backbone=tuple(method.trains_backbone),
        drawn_experts=bool(method.drawn_experts),
    )


def peft_pair(kind: str, config: dict[str, Any], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(untouched base model, PEFT model built from an identical copy)."""
    base = build_backbone(kind, seed=seed)
    model = get_peft_model(copy.deepcopy(base), config)
    return base, model


def allowed_trainable(model: nn.Module, base_names: set[str], exp: Expectation) -> set[int]:
    """Ids of the parameters a PEFT model may train: injected ones, head, CLS token, declared backbone parts."""
    spec = describe_backbone(model)
    ids: set[int] = set()
    for part in [*spec.head_modules, *spec.prefix_params]:
        ids |= {id(p) for p in ([part] if isinstance(part, nn.Parameter) else part.parameters())}
    for name, p in model.named_parameters():
        if name not in base_names or any(name.endswith(s) for s in exp.trains_backbone):
            ids.add(id(p))
    return ids


def loss_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Task loss + the method's weighted auxiliary losses, through ``training_forward``."""
    logits, aux = training_forward(model, inputs)
    loss = nn.functional.cross_entropy(logits, labels)
    return loss + sum(aux.values()) if aux else loss


def train_steps(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int = 2, lr: float = 1e-2,
                weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """A few AdamW steps on the trainable parameters only (the way the trainer builds its optimizer)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_of(model, inputs, labels).backward()
        opt.step()
    return opt


@torch.no_grad()
def eval_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(inputs)
