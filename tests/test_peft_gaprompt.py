"""GAPrompt (ICML 2025) against its release (zhoujiahuan1991/ICML2025-GAPrompt) and the point-hook extension point."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft_cases import eval_logits, make_batch, single_thread, tiny_point, tiny_vit, train_steps  # noqa: F401
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.models.point_transformer import build_point_transformer
from pointpeft.peft import get_peft_model, load_adapter, save_adapter
from pointpeft.peft.gaprompt import GAPromptState, propagate_prompts
from pointpeft.peft.point_prompts import PointPrompt, PointShiftPrompter

pytestmark = pytest.mark.usefixtures("single_thread")


def gaprompt(**options) -> nn.Module:
    return get_peft_model(tiny_point(), {"type": "gaprompt", **options})


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- parameter budget ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_group", "num_classes", "options", "expected"), [
    (64, 40, {}, 602_816),  # ModelNet40 (cfgs/gaprompt_modelnet.yaml)
    (128, 15, {"perturbation": 0.8}, 600_487),  # PB_T50_RS (cfgs/gaprompt_scan_hardest.yaml)
])
def test_parameter_count_on_point_mae_is_the_papers(num_group: int, num_classes: int, options: dict,
                                                    expected: int) -> None:
    model = build_point_transformer("point_mae", num_classes=num_classes, num_group=num_group)
    n = trainable(get_peft_model(model, {"type": "gaprompt", **options}))
    assert n == expected  # the derivation is in pointpeft/peft/gaprompt/config.py
    assert abs(n - 0.6e6) / 0.6e6 < 0.01  # Table 1: 0.6M


def test_release_names_and_what_trains() -> None:
    model = gaprompt()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for expected in ("point_prompt.points", "prompt_cor", "shift_net.abstraction_level1.mlp_convs.0.weight",
                     "shift_net.propagation1.mlp_bns.1.weight", "shift_net.mlp_position.3.weight",
                     "shape_feature_mlp.3.weight", "blocks.blocks.0.prompt_embeddings", "blocks.blocks.1.adapter.ln2.weight",
                     "blocks.blocks.1.out_transform.0.weight", "cls_head_finetune.0.weight", "cls_token", "cls_pos"):
        assert expected in names, expected
    assert model.cls_head_finetune[0].in_features == 3 * model.trans_dim  # concat(CLS, max, shape code)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith(("encoder.", "pos_embed.", "blocks.", "norm.")) for n in frozen)
    assert not any(n.endswith(("prompt_embeddings", "adapter.ln1.weight", "out_transform.0.weight")) for n in frozen)


# -- the extension point: points before the tokenizer -------------------------------------------------------------
class _Offset(nn.Module):
    """A trivial method: one learnable point appended to every cloud."""

    def __init__(self) -> None:
        super().__init__()
        self.point = nn.Parameter(torch.zeros(1, 1, 3))

    def hook(self, model: nn.Module, pts: torch.Tensor) -> torch.Tensor:
        return torch.cat([pts, self.point.expand(pts.shape[0], -1, -1)], dim=1)


def test_point_hook_changes_the_centres_and_gets_gradients_through_the_frozen_tokenizer() -> None:
    model = tiny_point()
    for p in model.parameters():
        p.requires_grad_(False)
    pts = torch.rand(2, 64, 3) + 1.0  # all coordinates in [1, 2]: the origin is far from every point
    pts[:, 0] = 2.0  # FPS starts at point 0; the appended origin is farther from it than any point: a centre
    _, before, _ = model.tokenize(pts)
    extra = _Offset()
    model.add_module("offset", extra)
    handle = model.register_point_hook(extra.hook)
    tokens, after, _ = model.tokenize(pts)
    assert not torch.equal(before, after)
    assert torch.isclose(after, torch.zeros(3)).all(-1).any()
    tokens.sum().backward()
    assert extra.point.grad is not None and extra.point.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n != "offset.point")
    handle.remove()
    torch.testing.assert_close(model.tokenize(pts)[1], before)


def test_point_prompts_get_a_gradient() -> None:
    model = gaprompt(shift_prompter=False)
    pts = torch.rand(2, 64, 3) * 2 - 1
    pts[:, 0] = 0.0  # FPS's first centre sits among the prompts (uniform in +-0.05)
    model.train()
    model(pts).sum().backward()
    assert model.point_prompt.points.grad.abs().sum() > 0
    assert model.encoder.first_conv[0].weight.grad is None


# -- layers -------------------------------------------------------------------------------------------------------
def test_point_prompt_and_shift_prompter() -> None:
    prompt = PointPrompt(7, scale=0.01, factor=5.0)
    assert prompt.points.abs().max() <= 0.01
    x = torch.rand(3, 64, 3)
    out = prompt(x)
    assert out.shape == (3, 71, 3) and torch.equal(out[:, :64], x)
    torch.testing.assert_close(out[1, 64:], 5.0 * prompt.points[0])
    shift = PointShiftPrompter(16, 8, perturbation=0.0).eval()
    moved, code = shift(x)
    assert torch.equal(moved, x) and code.shape == (3, shift.shape_dim) == (3, 8 * 8)
    shift.perturbation = 0.5
    moved, _ = shift(x)
    ratio = (moved - x) / x  # the shift is perturbation * x * mlp(features): proportional to the coordinate
    assert not torch.allclose(ratio, torch.zeros_like(ratio))


def _released_flat_propagation(x, centers, l2_centers, l2_index, l2_knn, transform):
    """The release's ``permutation_*`` branch of ``Block.forward`` (eval: drop path off), written out for reference."""
    B, D = x.shape[0], x.shape[-1]
    cls_x, x = x[:, :1], x[:, 1:].clone()
    G, Gp, G2 = x.shape[1], centers.shape[1], l2_centers.shape[1]
    base = torch.arange(B) * Gp  # the release's Group adds b * num_points, num_points = the G patch centres
    level1_index = (l2_knn + base.view(-1, 1, 1)).view(-1)
    level2_index = (l2_index + base.view(-1, 1)).view(-1)
    nb = x.reshape(B * G, -1)[level1_index, :].reshape(B * G2, -1, D)
    centre = x.reshape(B * G, -1)[level2_index, :].reshape(B, G2, D)
    nb = nb + nb
    vis = transform(nb.reshape(B, G2, -1, D).max(dim=2)[0].permute(0, 2, 1)).permute(0, 2, 1) + 0.3 * centre
    d = -2 * centers @ l2_centers.transpose(1, 2) + (centers**2).sum(-1)[..., None] + (l2_centers**2).sum(-1)[:, None]
    d, idx = d.sort(dim=-1)
    d, idx = d[:, :, :64], idx[:, :, :64]
    w = 1.0 / (d + 1e-8)
    w = (w / w.sum(dim=2, keepdim=True)).view(B, Gp, -1, 1)
    interp = (torch.stack([vis[b][idx[b]] for b in range(B)]) * w).sum(dim=2)
    x[:, -Gp:] = x[:, -Gp:] + 0.3 * interp
    return torch.cat([cls_x, x], dim=1)


class _BN1dOverChannels(nn.Module):
    """The release's out_transform call: BatchNorm1d on (B, D, G2) then GELU."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq[1](self.seq[0](x))


@pytest.mark.parametrize("num_prompts", [0, 3])
def test_flat_gather_is_the_released_indexing(num_prompts: int) -> None:
    torch.manual_seed(0)
    model = gaprompt(propagation_gather="flat").double().eval()
    block = model.blocks.blocks[1]
    with torch.no_grad():
        block.out_transform[0].running_mean.normal_()
        block.out_transform[0].running_var.uniform_(0.5, 2.0)
    B, G, D = 3, 16, model.trans_dim
    state = GAPromptState()
    state.set_centers(torch.rand(B, G, 3, dtype=torch.float64), model.cfg.group_size, "auto")
    x = torch.randn(B, 1 + num_prompts + G, D, dtype=torch.float64)
    ref = _released_flat_propagation(x, state.centers, state.level2_centers, state.level2_index, state.level2_knn,
                                     _BN1dOverChannels(block.out_transform))
    with torch.no_grad():
        torch.testing.assert_close(propagate_prompts(x, state, block, "flat"), ref)
        same = torch.allclose(propagate_prompts(x, state, block, "per_sample"), ref)
    assert same == (num_prompts == 0)  # without prompts in the sequence both read each cloud's own patches


@pytest.mark.parametrize(("gather", "independent"), [("per_sample", True), ("flat", False)])
def test_predictions_depend_on_the_batch_only_with_the_released_gather(gather: str, independent: bool) -> None:
    model = gaprompt(propagation_gather=gather)
    a, _ = make_batch("point", batch=2, seed=1)
    b = a.clone()
    b[0] = torch.randn(64, 3)  # another cloud before cloud 1
    out_a, out_b = eval_logits(model, a), eval_logits(model, b)
    assert torch.allclose(out_a[1], out_b[1], atol=1e-6) == independent


def test_blocks_see_patch_tokens_only_and_prompts_are_dropped() -> None:
    model = gaprompt(prompt_depth=1, num_tokens=4)
    lengths = []
    for block in model.blocks.blocks:
        block.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]), prepend=True)
        block.register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))
    feats = model.eval().forward_features(make_batch("point")[0])
    g = model.cfg.num_group
    assert lengths == [1 + g, 1 + g, 1 + g, 1 + g] and feats.shape[1] == 1 + g


# -- the framework's promises -------------------------------------------------------------------------------------
def test_train_save_load_round_trip(tmp_path) -> None:
    model = gaprompt(propagation="before_attention")
    inputs, labels = make_batch("point")
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_steps(model, inputs, labels, steps=2)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    save_adapter(model, tmp_path / "a")
    fresh = tiny_point()
    load_adapter(fresh, tmp_path / "a")
    torch.testing.assert_close(eval_logits(fresh, inputs), eval_logits(model, inputs))
    clone = copy.deepcopy(model)
    torch.testing.assert_close(eval_logits(clone, inputs), eval_logits(model, inputs))


def test_vit_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="gaprompt.*point transformer"):
        get_peft_model(tiny_vit(), {"type": "gaprompt"})


@pytest.mark.parametrize(("field", "value"), [("point_number", -1), ("propagation", "sideways"),
                                              ("propagation_gather", "x"), ("num_tokens", 0),
                                              ("head_dropout", 1.0)])
def test_bad_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be"):
        gaprompt(**{field: value})
    with pytest.raises(ConfigError, match="train_head must be true"):
        gaprompt(train_head=False)


def test_ablations_still_train() -> None:
    inputs, labels = make_batch("point")
    for options in ({"shift_prompter": False}, {"point_number": 0, "prompt_depth": 0, "propagation": "none"}):
        model = gaprompt(**options)
        train_steps(model, inputs, labels, steps=1)
        assert eval_logits(model, inputs).shape == (4, 5)
    assert not hasattr(gaprompt(shift_prompter=False), "shift_net")


# -- the released recipes -----------------------------------------------------------------------------------------
RELEASED = {  # cfgs/gaprompt_*.yaml, cfgs/fewshot.yaml: (point_number, perturbation, propagation, patches, epochs)
    "finetune/modelnet40": (5, 0.05, "after_attention", 64, 300),
    "finetune/scanobjectnn_objbg": (10, 0.2, "before_attention", 128, 300),
    "finetune/scanobjectnn_objonly": (10, 0.1, "after_attention", 128, 300),
    "finetune/scanobjectnn_hardest": (5, 0.8, "after_attention", 128, 300),
    "fewshot": (10, 0.2, "after_attention", 128, 300),
}


@pytest.mark.parametrize("leaf", sorted(RELEASED))
def test_leaves_carry_the_released_values(leaf: str) -> None:
    from pointpeft.config import load_config
    from pointpeft.peft import build_peft_config

    root = Path(__file__).resolve().parents[1] / "cfgs"
    cfg = load_config(root / leaf / "gaprompt.yaml" if leaf != "fewshot" else root / "fewshot" / "gaprompt.yaml")
    peft = build_peft_config(dict(cfg["peft"]))
    points, perturbation, propagation, patches, epochs = RELEASED[leaf]
    assert (peft.point_number, peft.perturbation, peft.propagation) == (points, perturbation, propagation)
    assert (cfg["model"].get("num_group", 64), cfg["train"]["epochs"]) == (patches, epochs)
    assert cfg["optimizer"] == {"type": "adamw", "lr": 5e-4, "weight_decay": 0.05}
    assert cfg["model"]["drop_path_rate"] == 0.1 and cfg["data"]["batch_size"] == 32
    (rotate,) = cfg["data"]["train"]["transforms"]  # runner_module.py: PointcloudRotate only, about the up axis
    assert rotate["type"] == "rotate_up" and rotate["axis"] == ("z" if "modelnet40" in leaf else "y")


def _released_shiftnet(net: PointShiftPrompter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ShiftNet.forward`` of the release in its own layouts (Conv2d on (B, C, K, G), Conv1d on (B, C, N)), eval."""
    from pointpeft.ops import farthest_point_sample, gather_points, knn_query

    def bn(layer, t):
        return torch.nn.functional.batch_norm(t, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                                              False, 0.0, layer.eps)

    def abstraction(sa, xyz, points):
        center = gather_points(xyz, farthest_point_sample(xyz, sa.num_group))
        new = gather_points(points, knn_query(sa.group_size, xyz, center)).permute(0, 3, 2, 1)
        for conv, norm in zip(sa.mlp_convs, sa.mlp_bns):
            new = torch.relu(bn(norm, conv(new)))
        return center, torch.max(new, 2)[0].permute(0, 2, 1)

    def propagation(fp, xyz1, xyz2, points1, points2):
        d = -2 * xyz1 @ xyz2.transpose(1, 2) + (xyz1**2).sum(-1)[..., None] + (xyz2**2).sum(-1)[:, None]
        d, idx = d.sort(dim=-1)
        d, idx = d[:, :, :32], idx[:, :, :32]
        w = 1.0 / (d + 1e-4)
        w = w / w.sum(dim=2, keepdim=True)
        interp = (gather_points(points2, idx) * w[..., None]).sum(dim=2)
        new = torch.cat([points1, interp], dim=-1).permute(0, 2, 1)
        for conv, norm in zip(fp.mlp_convs, fp.mlp_bns):
            new = torch.relu(bn(norm, conv(new)))
        return new.permute(0, 2, 1)

    feature = torch.cat([x] + [f(2.0**k * x) for k in range(4) for f in (torch.sin, torch.cos)], -1)
    c1, f1 = abstraction(net.abstraction_level1, x, feature)
    c2, f2 = abstraction(net.abstraction_level2, c1, f1)
    f1 = propagation(net.propagation2, c1, c2, f1, f2)
    feature = propagation(net.propagation1, x, c1, feature, f1)
    return net.mlp_position(feature) * net.perturbation * x + x, f2.reshape(x.shape[0], -1)


def test_shift_prompter_is_the_released_shiftnet() -> None:
    torch.manual_seed(0)
    net = PointShiftPrompter(16, 8, perturbation=0.8).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(3, 96, 3, dtype=torch.float64) * 2 - 1
    ours, theirs = net(x), _released_shiftnet(net, x)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])


def test_evaluation_records_the_shift_and_the_point_prompts() -> None:
    from pointpeft.peft import get_method

    model = gaprompt(perturbation=0.5)
    method = get_method(model)
    method.start_evaluation(model)
    eval_logits(model, make_batch("point")[0])
    rec = method.evaluation_records(model)["gaprompt"]
    assert 0 < rec["shift_relative"] < 10 and len(rec["point_prompts"]) == 5
    assert method.record_scalars({"gaprompt": rec}) == {"gaprompt/shift_relative": rec["shift_relative"]}
    method.start_evaluation(model)
    assert "shift_relative" not in method.evaluation_records(model)["gaprompt"]


def test_a_copied_model_records_its_own_forward_state() -> None:
    """The per-forward state lives on the method object, which lives on the model (``_peft_method``): a deep copy
    copies hooks, method and state together, so each model's records come from its own forwards."""
    from pointpeft.peft import get_method

    model = gaprompt(perturbation=0.5)
    twin = copy.deepcopy(model)
    method, twin_method = get_method(model), get_method(twin)
    assert twin_method is not method and twin_method.state is not method.state
    method.start_evaluation(model)
    twin_method.start_evaluation(twin)
    eval_logits(twin, make_batch("point")[0])
    assert "shift_relative" in twin_method.evaluation_records(twin)["gaprompt"]
    assert "shift_relative" not in method.evaluation_records(model)["gaprompt"]
