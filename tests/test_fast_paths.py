"""The mini-PointNet Encoder's rearranged GEMMs (split global/local weight, bias after max-pool, folded BatchNorm)
give the official Conv1d stack's outputs, gradients and BatchNorm statistics."""

import copy

import pytest
import torch

from pointpeft.models import build_point_transformer


def conv1d_reference(enc, groups):
    """The official Point-MAE Encoder forward (Conv1d on channels-first, concat of the global feature)."""
    B, G, M, _ = groups.shape
    x = groups.reshape(B * G, M, 3).transpose(2, 1)
    f = enc.first_conv(x)
    f = torch.cat([f.max(2, keepdim=True).values.expand(-1, -1, M), f], 1)
    return enc.second_conv(f).max(2).values.reshape(B, G, -1)


def make_encoder(name="point_mae_tiny"):
    torch.manual_seed(0)
    enc = build_point_transformer(name, num_classes=3).encoder
    with torch.no_grad():
        for bn in (enc.first_conv[1], enc.second_conv[1]):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
        for conv in (enc.first_conv[0], enc.first_conv[3], enc.second_conv[0], enc.second_conv[3]):
            conv.bias.normal_(0, 0.1)
    return enc


@pytest.mark.parametrize("name", ["point_mae_tiny", "point_bert_small"])
def test_eval_mode_folded_batchnorm_matches_conv1d(name):
    enc = make_encoder(name).eval()
    g = torch.randn(2, 6, 8, 3)
    with torch.no_grad():
        out, ref = enc(g), conv1d_reference(enc, g)
    assert out.shape == ref.shape == (2, 6, enc.encoder_channel)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_mode_outputs_grads_and_running_stats_match(momentum):
    enc = make_encoder()
    for bn in (enc.first_conv[1], enc.second_conv[1]):
        bn.momentum = momentum
    fast, ref = copy.deepcopy(enc).train(), copy.deepcopy(enc).train()
    g = torch.randn(3, 5, 8, 3)
    w = torch.randn(3, 5, enc.encoder_channel)
    for _ in range(2):  # twice: the cumulative average (momentum None) depends on num_batches_tracked
        o1, o2 = fast(g), conv1d_reference(ref, g)
        assert torch.allclose(o1, o2, atol=1e-5, rtol=1e-5)
    (o1 * w).sum().backward()
    (o2 * w).sum().backward()
    # Biases feeding a train-mode BN have mathematically zero gradients (the BN removes the mean), so compare all
    # gradients against the largest one rather than element by element.
    scale = max(p.grad.abs().max() for p in ref.parameters())
    for (name, p1), (_, p2) in zip(fast.named_parameters(), ref.named_parameters()):
        err = (p1.grad - p2.grad).abs().max() / scale
        assert err < 1e-5, (name, float(err))
    for (name, b1), (_, b2) in zip(fast.named_buffers(), ref.named_buffers()):
        assert torch.allclose(b1.float(), b2.float(), atol=1e-6), name


def test_frozen_batchnorm_with_trainable_convs_gets_gradients_through_the_fold():
    enc = make_encoder().eval()
    fast, ref = copy.deepcopy(enc), copy.deepcopy(enc)
    g = torch.randn(2, 4, 8, 3)
    fast(g).square().sum().backward()
    conv1d_reference(ref, g).square().sum().backward()
    for (name, p1), (_, p2) in zip(fast.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-5, rtol=1e-4), name
    assert torch.equal(fast.first_conv[1].running_mean, enc.first_conv[1].running_mean)  # eval: stats untouched


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_gemm_path_matches_sdpa(dtype):
    """CPU low-precision training takes the two-GEMM attention; outputs and gradients match SDPA's."""
    from pointpeft.models.transformer import attention

    torch.manual_seed(0)
    qkv = [torch.randn(2, 3, 20, 16, dtype=dtype, requires_grad=True) for _ in range(3)]
    ref_in = [t.detach().float().requires_grad_(True) for t in qkv]
    out = attention(*qkv)
    ref = torch.nn.functional.scaled_dot_product_attention(*ref_in)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert out.dtype == dtype and torch.allclose(out.float(), ref, atol=tol, rtol=tol)
    w = torch.randn_like(ref)
    (out.float() * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in zip(qkv, ref_in):
        assert torch.allclose(a.grad.float(), b.grad, atol=5 * tol, rtol=5 * tol)
    with torch.no_grad():  # inference keeps SDPA
        assert torch.allclose(attention(*[t.detach() for t in qkv]).float(), ref.detach(), atol=tol, rtol=tol)


def test_chunked_inference_matches_one_pass():
    enc = make_encoder("point_mae_small").eval()
    g = torch.randn(3, 10, 8, 3)
    with torch.no_grad():
        enc.chunk_groups = 0
        whole = enc(g)
        enc.chunk_groups = 7  # 30 groups -> chunks of 7, 7, 7, 7, 2
        chunked = enc(g)
    assert torch.allclose(chunked, whole, atol=1e-6)
    enc.train()  # batch statistics couple the groups: never chunked
    assert enc._needs_full_batch()


# -- Adapter-X expert dispatch: grouped GEMM vs the sorted per-expert loop -----------------------------------------
def _adapterx_pair(router: str, bottleneck: int):
    """Two copies of a tiny Adapter-X model with random adapter weights: grouped dispatch and loop dispatch."""
    from pointpeft.peft import get_peft_model
    from pointpeft.peft.adapterx import smoa_blocks

    torch.manual_seed(0)
    model = get_peft_model(build_point_transformer("point_mae_tiny", num_classes=5),
                           {"type": "adapterx", "router": router, "num_experts": 6, "bottleneck": bottleneck})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "peft" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    loop = copy.deepcopy(model)
    smoa_blocks(model)[0].pool.experts.dispatch = "grouped"
    smoa_blocks(loop)[0].pool.experts.dispatch = "loop"
    return model, loop


@pytest.mark.parametrize("router", ["shared", "per_block"])
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("bottleneck", [8, 5])  # 5: hidden width padded to the 16-byte rows of the grouped GEMM
def test_grouped_expert_dispatch_matches_loop_train_and_eval(router, batch, bottleneck):
    from pointpeft.peft import training_forward
    from pointpeft.peft.adapterx import expert_usage, routing_choices

    torch.set_num_threads(1)
    grouped, loop = _adapterx_pair(router, bottleneck)
    x = torch.rand(batch, 128, 3, generator=torch.Generator().manual_seed(2))
    y = torch.arange(batch) % 5
    grads = []
    for model in (grouped, loop):
        model.train()
        for m in model.modules():  # batch 1: BatchNorm of the head cannot train on one sample
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and batch == 1:
                m.eval()
        torch.manual_seed(3)  # the same dropout masks in both
        logits, aux = training_forward(model, x)
        loss = torch.nn.functional.cross_entropy(logits, y) + sum(aux.values())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["logits"], grads[-1]["aux"] = logits.detach(), sum(aux.values()).detach()
    for a, b in zip(routing_choices(grouped).values(), routing_choices(loop).values(), strict=True):
        assert torch.equal(a, b)
    for name in grads[1]:
        assert grads[1][name].abs().sum() > 0 or "head" in name, f"{name}: no gradient reached it"
        # atol grows with the tensor's largest entry: an element that is a sum of cancelling terms (the CLS token's
        # gradient through every block) differs by ~1e-3 of the tensor's scale between two summation orders
        # (AVX-512 kernels); a gradient that is zero up to rounding (a bias before BatchNorm) keeps atol 1e-5
        ref = grads[1][name]
        torch.testing.assert_close(grads[0][name], ref, rtol=1e-4, atol=1e-5 + 2e-3 * float(ref.abs().max()),
                                   msg=name)
    for model in (grouped, loop):
        model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(grouped(x), loop(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(expert_usage(grouped), expert_usage(loop))
    for model in (grouped, loop):  # weights changed behind the version counters: the packed copies must follow
        model.peft_smoa.experts.w_up.data.mul_(3.0)
        model.peft_smoa.experts.b_up.data.add_(0.5)
    with torch.inference_mode():
        torch.testing.assert_close(grouped(x), loop(x), rtol=1e-5, atol=1e-5)


def test_grouped_dispatch_keeps_no_d_wide_copy_for_backward():
    """The loop's autograd keeps two d-wide copies of the sub-tokens per block beside the router's input (the
    sorted rows for the down GEMMs, the expert output for ``index_copy``); the grouped node keeps neither."""
    pool = _adapterx_pair("shared", 8)[0].peft_smoa
    n, d = 64 * pool.num_heads, pool.sub_dim
    x = torch.randn(4, 16, d * pool.num_heads, requires_grad=True)

    def saved_bytes(dispatch):
        pool.experts.dispatch = dispatch
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pool(x).out.sum().backward()
        params = {p.untyped_storage().data_ptr() for p in pool.parameters()}
        return sum(v for k, v in storages.items() if k not in params)

    assert saved_bytes("loop") - saved_bytes("grouped") >= 1.5 * n * d * 4
