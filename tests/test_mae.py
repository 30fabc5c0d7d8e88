"""Point-MAE pretraining model: official key layout, masking, learning, export -> load_pretrained round trip."""

from __future__ import annotations

import pytest
import torch
from helpers.official_ckpt import point_mae_pretrain_state

from pointpeft.errors import ConfigError, InputError
from pointpeft.models import build_point_transformer, load_pretrained
from pointpeft.models.mae import (
    PointMAE,
    build_point_mae_pretrain,
    export_pretrain_checkpoint,
    pretrain_config,
)
from pointpeft.registry import MODELS

#: Representative keys of Pang-Yatian/Point-MAE's Point_MAE (384 wide, 12 deep, decoder depth 4, 32-point groups).
OFFICIAL_KEYS = {
    "mask_token": (1, 1, 384),
    "MAE_encoder.encoder.first_conv.0.weight": (128, 3, 1),
    "MAE_encoder.encoder.first_conv.1.running_var": (128,),
    "MAE_encoder.encoder.first_conv.3.weight": (256, 128, 1),
    "MAE_encoder.encoder.second_conv.0.weight": (512, 512, 1),
    "MAE_encoder.encoder.second_conv.3.weight": (384, 512, 1),
    "MAE_encoder.pos_embed.0.weight": (128, 3),
    "MAE_encoder.pos_embed.2.weight": (384, 128),
    "MAE_encoder.blocks.blocks.0.norm1.weight": (384,),
    "MAE_encoder.blocks.blocks.0.attn.qkv.weight": (1152, 384),
    "MAE_encoder.blocks.blocks.11.attn.proj.bias": (384,),
    "MAE_encoder.blocks.blocks.11.mlp.fc1.weight": (1536, 384),
    "MAE_encoder.blocks.blocks.11.mlp.fc2.weight": (384, 1536),
    "MAE_encoder.norm.weight": (384,),
    "decoder_pos_embed.0.weight": (128, 3),
    "decoder_pos_embed.2.bias": (384,),
    "MAE_decoder.blocks.0.attn.qkv.weight": (1152, 384),
    "MAE_decoder.blocks.3.mlp.fc2.bias": (384,),
    "MAE_decoder.norm.bias": (384,),
    "increase_dim.0.weight": (96, 384, 1),
    "increase_dim.0.bias": (96,),
}


def clouds(n: int = 6, points: int = 128, seed: int = 0) -> torch.Tensor:
    """Noisy spheres and boxes of random size: structured enough that reconstruction can be learnt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        v = torch.randn(points, 3, generator=g)
        if i % 2:
            v = v / v.abs().max(dim=1, keepdim=True).values  # cube surface
        else:
            v = v / v.norm(dim=1, keepdim=True)
        scale = 0.5 + torch.rand(1, 3, generator=g)
        out.append(v * scale + 0.01 * torch.randn(points, 3, generator=g))
    return torch.stack(out)


def tiny(seed: int = 0, **over) -> PointMAE:
    torch.manual_seed(seed)
    return build_point_mae_pretrain("point_mae_tiny", **over)


def test_official_layout_384() -> None:
    model = MODELS.build({"type": "point_mae_pretrain", "arch": "point_mae"})
    sd = model.state_dict()
    for key, shape in OFFICIAL_KEYS.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    # the whole key set and every shape equal the official file's (written from the fine-tune model's encoder)
    official = point_mae_pretrain_state(build_point_transformer("point_mae", num_classes=40))
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in official.items()}
    assert not any(k.startswith("group_divider") or "cls_" in k for k in sd)
    cfg = model.cfg
    assert (cfg.mask_ratio, cfg.mask_type, cfg.loss, cfg.decoder_depth, cfg.decoder_num_heads) == (
        0.6, "rand", "cdl2", 4, 6)


def test_variants_follow_finetune_architectures() -> None:
    small = pretrain_config("point_mae_small")
    assert (small.trans_dim, small.depth, small.num_heads, small.decoder_num_heads) == (192, 6, 3, 3)
    t = pretrain_config("point_mae_tiny", mask_ratio=0.5)
    assert (t.trans_dim, t.num_group, t.group_size, t.mask_ratio) == (64, 16, 8, 0.5)
    with pytest.raises(ConfigError, match="Point-BERT"):
        pretrain_config("point_bert")
    with pytest.raises(ConfigError, match="unknown architecture"):
        pretrain_config("point_mea")
    with pytest.raises(ConfigError, match="mask_rato"):
        MODELS.build({"type": "point_mae_pretrain", "arch": "point_mae_tiny", "mask_rato": 0.5})
    with pytest.raises(ConfigError, match="mask_ratio"):
        pretrain_config("point_mae_tiny", mask_ratio=1.0)
    with pytest.raises(ConfigError, match="mask_type"):
        pretrain_config("point_mae_tiny", mask_type="grid")


@pytest.mark.parametrize("mask_type", ["rand", "block"])
def test_masks_partition_patches(mask_type: str) -> None:
    enc = tiny(mask_type=mask_type).MAE_encoder
    center = torch.rand(5, 16, 3)
    vis, masked = enc.make_mask(center, generator=torch.Generator().manual_seed(1))
    assert vis.shape == (5, 16 - 9) and masked.shape == (5, 9)  # int(0.6 * 16) hidden
    both = torch.cat([vis, masked], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(16).expand(5, 16))
    again = enc.make_mask(center, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], vis) and torch.equal(again[1], masked)
    if mask_type == "block":  # hidden = the centres nearest one seed centre: every hidden one is nearer than any visible
        for b in range(5):
            seed = center[b, masked[b]]
            d = torch.cdist(seed, center[b])  # from every hidden centre, one of them is the seed
            i = int((d[:, masked[b]].max(dim=1).values - d[:, vis[b]].min(dim=1).values).argmin())
            assert d[i, masked[b]].max() <= d[i, vis[b]].min()
    else:  # different clouds get different masks
        assert len({tuple(m.tolist()) for m in masked}) > 1
    vis0, masked0 = enc.make_mask(center, noaug=True)
    assert vis0.shape == (5, 16) and masked0.shape == (5, 0)


def test_forward_shapes_and_reconstruct() -> None:
    model = tiny().eval()
    pts = clouds(3)
    loss, parts = model.loss_parts(pts, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    assert parts["rebuild"].shape == parts["gt"].shape == (3, 9, 8, 3)
    inp, visible, full = model.reconstruct(pts, generator=torch.Generator().manual_seed(0))
    assert inp is pts and visible.shape == (3, 7 * 8, 3) and full.shape == (3, 16 * 8, 3)
    # visible points are input points, and the full cloud starts with them
    d = (visible[:, :, None] - pts[:, None]).norm(dim=-1).min(dim=2).values
    assert d.max() < 1e-6
    assert torch.equal(full[:, : visible.shape[1]], visible)
    feats = model.extract_features(pts)
    assert feats.shape == (3, 128)
    with pytest.raises(InputError, match="nothing to reconstruct"):
        tiny(mask_ratio=0.0)(pts)


def test_tiny_model_learns_to_reconstruct() -> None:
    model = tiny(drop_path_rate=0.0)
    pts = clouds(8)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(pts, generator=torch.Generator().manual_seed(123)))

    before = held_out_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    losses = []
    for _ in range(20):
        loss = model(pts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = held_out_loss()
    assert after < 0.6 * before, (before, after)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # every parameter (mask token, decoder, increase_dim ...) trains


def test_export_loads_into_finetune_model(tmp_path) -> None:
    torch.manual_seed(0)
    mae = tiny(seed=3)
    mae.train()
    for _ in range(2):  # non-trivial BatchNorm statistics, so buffers must travel too
        mae(clouds(4, seed=5))
    mae.eval()
    path = export_pretrain_checkpoint(mae, tmp_path / "pretrain.pth", epoch=7, metrics={"cd_l2": 0.01})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["epoch"] == 7 and raw["metrics"] == {"cd_l2": 0.01}
    assert set(raw["base_model"]) == set(mae.state_dict())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file

    ft = build_point_transformer("point_mae_tiny", num_classes=5).eval()
    report = load_pretrained(ft, path)
    head = {k for k in ft.state_dict() if k.startswith("cls_head_finetune.")}
    assert report.source_format == "point_mae_pretrain"
    assert set(report.missing_keys) == {"cls_token", "cls_pos"} | head
    decoder_side = {k for k in mae.state_dict() if not k.startswith("MAE_encoder.")}
    assert set(report.unexpected_keys) == decoder_side

    # the original Point-MAE loader: strip "module." and "MAE_encoder.", load_state_dict(strict=False)
    base = {k.replace("module.", ""): v for k, v in raw["base_model"].items()}
    base = {(k[len("MAE_encoder."):] if k.startswith("MAE_encoder.") else k): v for k, v in base.items()}
    ft2 = build_point_transformer("point_mae_tiny", num_classes=5)
    res = ft2.load_state_dict(base, strict=False)
    assert set(res.missing_keys) == {"cls_token", "cls_pos"} | {k for k in head if "num_batches" not in k}

    pts = clouds(3, seed=9)
    with torch.no_grad():
        tokens, center, pos = ft.tokenize(pts)
        neighborhood, center_m = mae.group_divider(pts)
        torch.testing.assert_close(center, center_m, rtol=0, atol=0)
        torch.testing.assert_close(tokens, mae.MAE_encoder.encoder(neighborhood))
        torch.testing.assert_close(pos, mae.MAE_encoder.pos_embed(center_m))
        # mask ratio 0: the encoder sees every patch; the fine-tune blocks on the same tokens give the same output
        torch.testing.assert_close(ft.norm(ft.blocks(tokens, pos)), mae.forward_features(pts))
        x, vis_idx, mask_idx = mae.MAE_encoder(neighborhood, center_m, noaug=True)
        assert mask_idx.numel() == 0
        torch.testing.assert_close(x, mae.forward_features(pts))


def test_export_rejects_other_models(tmp_path) -> None:
    with pytest.raises(InputError, match="PointMAE"):
        export_pretrain_checkpoint(build_point_transformer("point_mae_tiny"), tmp_path / "x.pth")
