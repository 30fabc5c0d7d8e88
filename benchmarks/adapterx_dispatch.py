"""Evidence for the Adapter-X expert dispatch (issue 10): why bf16 training is slower than fp32, and a fix to try.

    python -m benchmarks.adapterx_dispatch [--model point_mae_small] [--rounds 5]

``ExpertPool.forward`` (pointpeft/peft/adapterx/layers.py) sorts the sub-tokens by expert and runs a Python loop of
two small GEMMs per expert whose row counts change every step. On CPU in bf16 every new GEMM shape makes oneDNN
create (JIT) a new kernel, and one step has more distinct shapes than its primitive cache holds (12 blocks x 16
experts x fwd/bwd GEMMs), so bf16 training pays kernel creation on most expert GEMMs. This script

1. times a bf16 vs fp32 GEMM with a fixed vs a changing row count (the root cause);
2. counts the GEMM calls and distinct GEMM shapes of one Adapter-X training step (torch.profiler);
3. compares the current dispatch with two alternatives, monkeypatched in this process only, on a whole training step
   and on inference (outputs agree to float rounding):

   * ``fp32_experts_dispatch``: the same loop with autocast off inside (expert GEMMs in float32);
   * ``padded_bmm_dispatch``: sub-tokens scattered into an (experts, capacity, d) buffer, capacity rounded up to a
     multiple of 32 so shapes repeat, two ``baddbmm`` calls, the router gate applied in the r-wide bottleneck instead
     of on the d-wide output. Fast when routing is balanced; the padding costs (max/mean expert load) x the expert
     FLOPs, and at initialisation the busiest expert gets 4-7x the mean (printed below).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
import torch.nn.functional as F

from benchmarks.step import TrainStep, build_peft, make_inputs
from benchmarks.timing import paired_ratio, time_interleaved
from pointpeft.peft.adapterx.layers import ExpertPool

CURRENT = ExpertPool.forward


def fp32_experts_dispatch(self: ExpertPool, x: torch.Tensor, idx: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The current sorted loop with autocast off inside: the expert GEMMs run in float32 (MKL, no per-shape JIT).
    The experts are ~1% of a step's FLOPs, so nothing is lost by not running them in bf16."""
    with torch.autocast(x.device.type, enabled=False):
        return CURRENT(self, x.float(), idx, gate.float()).to(x.dtype)


def padded_bmm_dispatch(self: ExpertPool, x: torch.Tensor, idx: torch.Tensor, gate: torch.Tensor,
                        bucket: int = 32) -> torch.Tensor:
    """``scale * gate[n] * expert_{idx[n]}(x[n])`` with two batched GEMMs over an (E, capacity, d) buffer."""
    n, d = x.shape
    e = self.num_experts
    counts = torch.bincount(idx, minlength=e)
    cap = -(-int(counts.max()) // bucket) * bucket  # one host sync, as the current .tolist()
    order = idx.argsort()
    sorted_e = idx.index_select(0, order)
    starts = counts.cumsum(0) - counts
    slot_sorted = sorted_e * cap + torch.arange(n, device=x.device) - starts.index_select(0, sorted_e)
    slot = torch.empty_like(slot_sorted).index_copy_(0, order, slot_sorted)  # buffer row of every sub-token
    buf = x.new_zeros(e * cap, d).index_copy(0, slot, x).view(e, cap, d)
    g = x.new_zeros(e * cap).index_copy(0, slot, (gate * self.scale).to(x.dtype)).view(e, cap, 1)
    h = self.dropout(F.gelu(torch.baddbmm(self.b_down.unsqueeze(1).to(x.dtype), buf, self.w_down.to(x.dtype))))
    y = torch.baddbmm(self.b_up.unsqueeze(1).to(h.dtype) * g, h * g, self.w_up.to(h.dtype))  # gate in the bottleneck
    return y.reshape(e * cap, d).index_select(0, slot)


def routing_balance(model: str) -> None:
    from pointpeft.peft.adapterx import expert_usage, reset_expert_usage

    m = build_peft(model, "adapterx", torch.device("cpu")).eval()
    x, _ = make_inputs(32, 1024, 40, torch.device("cpu"))
    reset_expert_usage(m)
    with torch.no_grad():
        m(x)
    load = [round(float(r.max() * r.numel()), 1) for r in expert_usage(m)]
    print(f"   routing at initialisation, busiest expert / mean per block: {load}")


DISPATCHES = {"current": CURRENT, "fp32 experts": fp32_experts_dispatch, "padded bmm": padded_bmm_dispatch}


def gemm_shape_cost(reps: int = 300) -> None:
    print("1) one small GEMM (n x 96) @ (96 x 20), n fixed vs changing every call:")
    w = torch.randn(96, 20)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for mode in ("fixed n", "changing n"):
            ns = [200] * reps if mode == "fixed n" else torch.randint(50, 400, (reps,), generator=gen).tolist()
            xs = [torch.randn(n, 96).to(dtype) for n in ns]
            wd = w.to(dtype)
            for x in xs[:5]:
                x @ wd
            t0 = time.perf_counter()
            for x in xs:
                x @ wd
            print(f"   {str(dtype)[6:]:9s} {mode:10s}: {1e6 * (time.perf_counter() - t0) / reps:7.1f} us per GEMM")


def profile_step(model: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    print(f"2) GEMMs in one Adapter-X training step ({model}, batch 32, bf16 autocast), current dispatch:")
    ExpertPool.forward = CURRENT
    step = TrainStep(model, "adapterx", "bf16", torch.device("cpu"), 32, 1024)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    mm = [e for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")]
    shapes = Counter(str(e.input_shapes) for e in mm)
    total = sum(e.self_cpu_time_total for e in prof.events()) / 1000
    mm_ms = sum(e.self_cpu_time_total for e in mm) / 1000
    print(f"   {len(mm)} GEMM calls, {len(shapes)} distinct shapes, {mm_ms:.0f} ms of {total:.0f} ms in GEMMs")


def whole_model(model: str, rounds: int) -> None:
    def use(dispatch):
        def run(fn):
            def wrapped() -> None:
                ExpertPool.forward = dispatch
                fn()
            return wrapped
        return run

    print(f"3) {model}, batch 32 Adapter-X training step (interleaved, {rounds} rounds; ms median [min-max]):")
    fns = {}
    for prec in ("fp32", "bf16"):
        for name, dispatch in DISPATCHES.items():
            fns[f"{prec} {name}"] = use(dispatch)(TrainStep(model, "adapterx", prec, torch.device("cpu"), 32, 1024))
    stats = time_interleaved(fns, warmup=1, reps=rounds)
    for k, s in stats.items():
        ref = stats["fp32 current"]
        print(f"   {k:18s} {1000 * s.median:7.0f} [{1000 * s.min:.0f}-{1000 * s.max:.0f}]  "
              f"fp32-current/this {paired_ratio(ref.values, s.values).median:.2f}x")
    ExpertPool.forward = CURRENT

    print(f"   inference, fp32 (ms; vs plain backbone, median of paired ratios, {3 * rounds} rounds):")
    base = build_peft(model, "backbone", torch.device("cpu")).eval()
    ax = build_peft(model, "adapterx", torch.device("cpu"))
    ax.load_state_dict(base.state_dict(), strict=False)
    ax.eval()
    with torch.no_grad():
        for p in ax.parameters():
            if p.requires_grad and p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
    for b in (32, 1):
        x, _ = make_inputs(b, 1024, 40, torch.device("cpu"))
        x_out = {}
        fns = {"backbone": lambda x=x: base(x)}
        for name, dispatch in DISPATCHES.items():
            def f(dispatch=dispatch, x=x, name=name, x_out=x_out) -> None:
                ExpertPool.forward = dispatch
                x_out[name] = ax(x)
            fns[name] = f
        with torch.inference_mode():
            stats = time_interleaved(fns, warmup=2, reps=3 * rounds)
        diff = max((x_out["current"] - v).abs().max().item() for v in x_out.values())
        print(f"   batch {b:2d}: " + "; ".join(
            f"{k} {1000 * s.median:.1f} ({paired_ratio(s.values, stats['backbone'].values).median:.2f}x)"
            for k, s in stats.items()) + f"; max |logit diff| {diff:.1e}")
    ExpertPool.forward = CURRENT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="point_mae_small")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gemm_shape_cost()
    profile_step(args.model)
    routing_balance(args.model)
    whole_model(args.model, args.rounds)


if __name__ == "__main__":
    main()
