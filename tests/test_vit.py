"""The 2D path: timm ViTs built from config, and the same PEFT code training them on the embedded digits set."""

from __future__ import annotations

import pytest
import torch
from peft_cases import method_variants, single_thread, supports  # noqa: F401  (fixture)
from torch import nn

import pointpeft
from pointpeft.data import build_dataloader, build_dataset
from pointpeft.errors import ConfigError
from pointpeft.models import build_point_transformer
from pointpeft.models.vit import VIT_PRESETS, build_vit
from pointpeft.peft import get_peft_model, trainable_parameter_report, training_forward
from pointpeft.peft.adapterx import SMoA, SMoABlock

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch (32 images 3x32x32) of a seeded digits train loader."""
    ds = build_dataset({"type": "digits", "split": "train", "img_size": 32})
    return next(iter(build_dataloader(ds, batch_size=32, shuffle=True, seed=0)))


def tiny(num_classes: int = 10, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_vit("vit_test_tiny", num_classes=num_classes, **kw)


def test_build_from_config_node_and_forward() -> None:
    model = pointpeft.build_model({"type": "vit", "name": "vit_test_tiny", "num_classes": 10, "weights": None,
                                   "img_size": 32, "drop_path_rate": 0.1, "global_pool": "token"})
    from timm.models.vision_transformer import VisionTransformer

    assert type(model) is VisionTransformer and model.arch_name == "vit_test_tiny"
    assert len(model.blocks) == 2 and model.patch_embed.patch_size == (8, 8) and model.embed_dim == 192
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 192)  # 16 patches + CLS
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.forward_head(feats))
    assert model.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)


def test_presets_and_options() -> None:
    small = build_vit("vit_test_small", num_classes=3)
    assert len(small.blocks) == 4 and small.embed_dim == 384 and small(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert set(VIT_PRESETS) == {"vit_test_tiny", "vit_test_small"}
    avg = tiny(global_pool="avg", depth=3, model_kwargs={"qkv_bias": False})
    assert avg.global_pool == "avg" and len(avg.blocks) == 3 and avg.blocks[0].attn.qkv.bias is None
    with torch.device("meta"):  # a full-size model costs nothing on the meta device
        base = build_vit("vit_base_patch16_224", num_classes=100)
    assert sum(p.numel() for n, p in base.named_parameters() if not n.startswith("head.")) == 85_798_656


@pytest.mark.parametrize("node, match", [
    ({"name": "vit_bse_patch16_224"}, "close matches.*vit_base_patch16_224"),
    ({"name": "resnet50"}, "not a timm VisionTransformer"),
    ({"name": "vit_test_tiny", "global_pool": "mean"}, "global_pool"),
    ({"name": "vit_test_tiny", "num_classes": -1}, "num_classes"),
    ({"name": "vit_test_tiny", "drop_path_rate": 1.5}, "drop_path_rate"),
    ({"name": "vit_test_tiny", "model_kwargs": {"qkv_bais": False}}, "qkv_bais"),
    ({"name": "vit_test_tiny", "pretrained": True}, "unknown key"),
])
def test_config_errors(node: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        pointpeft.build_model({"type": "vit", **node})


VIT_VARIANTS = [v for v in method_variants() if supports(v[1], "vit")]
POINT_ONLY = [v for v in method_variants() if not supports(v[1], "vit")]


@pytest.mark.parametrize("label, config", POINT_ONLY, ids=[v[0] for v in POINT_ONLY])
def test_point_only_methods_refuse_a_vit_by_name(label: str, config: dict) -> None:
    """Methods built on 3D centres or points (PointGST, GAPrompt, PointLoRA) say so instead of half-injecting."""
    with pytest.raises(ConfigError, match=config["type"]):
        get_peft_model(tiny(drop_path_rate=0.0), dict(config))


@pytest.mark.parametrize("label, config", VIT_VARIANTS, ids=[v[0] for v in VIT_VARIANTS])
def test_every_method_trains_on_digits(label: str, config: dict,
                                       digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each PEFT method on the tiny ViT: a few AdamW steps on a digits batch lower that batch's loss, and only the
    trainable parameters move."""
    x, y = digits_batch
    model = get_peft_model(tiny(drop_path_rate=0.0), dict(config))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, f"{label}: nothing to train"
    lr = 1e-3 if config["type"] == "full" else 3e-3  # full fine-tuning oscillates at the PEFT learning rate
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x), y))

    before = loss_now()
    model.train()
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        logits, aux = training_forward(model, x)
        loss = nn.functional.cross_entropy(logits, y) + sum(aux.values())
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.85 * before, f"{label}: loss {before:.3f} -> {after:.3f}"
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{label}: frozen {n} changed"


def test_smoa_modules_are_the_point_transformer_classes() -> None:
    vit = get_peft_model(tiny(), {"type": "adapterx"})
    pt = get_peft_model(build_point_transformer("point_mae_tiny", num_classes=10), {"type": "adapterx"})
    vit_block, pt_block = vit.blocks[0].mlp.peft_adapter, pt.blocks.blocks[0].mlp.peft_adapter
    assert type(vit_block) is type(pt_block) is SMoABlock
    assert type(vit.peft_smoa) is type(pt.peft_smoa) is SMoA
    assert all(b.mlp.peft_adapter.pool is vit.peft_smoa for b in vit.blocks)  # one pool shared by every block


def test_adapterx_budget_on_vit_b16() -> None:
    """Adapter-X on ViT-B/16 with 100 classes: ~0.20% of the backbone trains (the paper's 2D row), head aside."""
    with torch.device("meta"):
        model = get_peft_model(build_vit("vit_base_patch16_224", num_classes=100), {"type": "adapterx"})
    report = trainable_parameter_report(model)
    head = sum(p.numel() for p in model.head.parameters())
    assert head == 76_900
    backbone = 85_798_656
    pct = 100 * (report["trainable"] - head) / backbone
    assert 0.17 <= pct <= 0.22, pct
    assert report["total"] - backbone - head == report["trainable"] - head - 18_432 - 768  # new = trainable - norms - CLS


def test_adapter_round_trip_on_weights_from_a_file(tmp_path, digits_batch) -> None:
    """The 2D workflow: backbone from a local file, Adapter-X trained briefly, adapter saved alone, then loaded onto
    a fresh build from the same file: identical logits."""
    from pointpeft.peft import load_adapter, save_adapter

    torch.save(tiny(seed=7).state_dict(), tmp_path / "backbone.pth")
    x, y = digits_batch
    model = get_peft_model(build_vit("vit_test_tiny", num_classes=10, weights=tmp_path / "backbone.pth"),
                           {"type": "adapterx"})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        logits, aux = training_forward(model, x)
        (nn.functional.cross_entropy(logits, y) + sum(aux.values())).backward()
        opt.step()
    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(build_vit("vit_test_tiny", num_classes=10, weights=tmp_path / "backbone.pth"),
                         tmp_path / "adapter")
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
