"""CUDA paths (run by scripts/gpu_check.sh where a GPU is lent; skipped cleanly without one): the pure-torch ops
on CUDA against the CPU reference, pointnet2_ops when importable, the Adapter-X dispatch, a training step on CUDA
against the same step on CPU, fp16 with loss scaling, bf16 autocast, ``--amp auto``, CUDA-event timing."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from pointpeft.models import build_point_transformer
from pointpeft.ops import chamfer_distance, farthest_point_sample, knn_query
from pointpeft.peft import get_peft_model, training_forward

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_check.sh)")]


def _clouds(b: int = 4, n: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _adapterx(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = get_peft_model(build_point_transformer("point_mae_tiny", num_classes=5), {"type": "adapterx"})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero experts, so the dispatch matters
        for name, p in model.named_parameters():
            if p.requires_grad and "peft" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_pure_torch_ops_on_cuda_match_cpu() -> None:
    xyz = _clouds()
    idx = farthest_point_sample(xyz, 32, backend="torch")
    assert torch.equal(farthest_point_sample(xyz.cuda(), 32, backend="torch").cpu(), idx)
    centres = torch.gather(xyz, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(knn_query(16, xyz.cuda(), centres.cuda()).cpu(), knn_query(16, xyz, centres))
    a, b = _clouds(seed=1), _clouds(seed=2)
    ref = chamfer_distance(a, b, backend="torch")
    got = chamfer_distance(a.cuda(), b.cuda(), backend="torch")
    for r, g in zip(ref, got):
        if isinstance(r, torch.Tensor):
            torch.testing.assert_close(g.cpu(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("pointnet2_ops") is None, reason="pointnet2_ops not installed")
def test_pointnet2_ops_fps_matches_reference() -> None:
    # away from the origin: pointnet2's kernel skips points within 0.032 of it
    xyz = _clouds()
    xyz = xyz + 0.2 * torch.sign(xyz)
    ref = farthest_point_sample(xyz, 32, backend="torch")
    got = farthest_point_sample(xyz.cuda(), 32, backend="pointnet2")
    assert got.device.type == "cuda" and torch.equal(got.cpu(), ref)


def test_adapterx_dispatch_on_cuda_matches_loop() -> None:
    from pointpeft.peft.adapterx import smoa_blocks

    model = _adapterx().cuda().eval()
    x = _clouds(2, 256).cuda()
    experts = smoa_blocks(model)[0].pool.experts
    with torch.inference_mode():
        auto = model(x)
        experts.dispatch = "loop"
        loop = model(x)
    torch.testing.assert_close(auto, loop, rtol=1e-4, atol=1e-4)


def test_training_step_on_cuda_matches_cpu() -> None:
    cpu = _adapterx().eval()  # eval: no dropout / drop-path, so both devices compute the same function
    gpu = copy.deepcopy(cpu).cuda()
    x, y = _clouds(3, 256), torch.tensor([0, 1, 2])
    grads = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        logits, aux = training_forward(model, x.to(dev))
        loss = F.cross_entropy(logits, y.to(dev)) + sum(aux.values())
        loss.backward()
        grads.append({n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-4, msg=name)


def test_fp16_with_loss_scaling_steps() -> None:
    from pointpeft.engine.amp import make_grad_scaler, resolve_amp

    policy = resolve_amp("fp16", "cuda")
    assert policy.dtype == torch.float16 and policy.use_scaler
    scaler = make_grad_scaler(policy)
    assert scaler.is_enabled()
    model = _adapterx().cuda().train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x, y = _clouds(4, 256).cuda(), torch.tensor([0, 1, 2, 3]).cuda()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        with policy.autocast():
            logits, aux = training_forward(model, x)
            loss = F.cross_entropy(logits.float(), y) + sum(aux.values())
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(), reason="GPU without bf16")
def test_bf16_autocast_close_to_fp32() -> None:
    model = _adapterx().cuda().eval()
    x = _clouds(4, 256).cuda()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype in (torch.bfloat16, torch.float32)
    torch.testing.assert_close(got.float(), ref, rtol=5e-2, atol=5e-2)


def test_amp_auto_on_cuda_picks_a_half_precision() -> None:
    from pointpeft.engine.amp import resolve_amp

    policy = resolve_amp("auto", "cuda")
    assert policy.mode == ("bf16" if torch.cuda.is_bf16_supported() else "fp16") and policy.reason


def test_benchmark_timer_uses_cuda_events() -> None:
    from benchmarks.timing import Timer

    a = torch.randn(2048, 2048, device="cuda")
    t = Timer("cuda")
    assert t.cuda and t(lambda: a @ a) > 0
