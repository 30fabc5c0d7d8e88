"""SMoA section: where Adapter-X's time goes, part by part, and what each dispatch costs (issue 19).

On one block's real input (the norm2 output of block 0 of a model with perturbed adapter weights), timed
interleaved: the router (projection, cosine logits, softmax, top-1), the experts with the grouped-GEMM dispatch and
with the per-expert loop (forward, and forward + backward), the prompt generator; and on the whole model at each
inference batch: backbone, Adapter-X, Adapter-X with the loop dispatch, Adapter-X without prompt generators (what
the extra tokens cost) and merged LoRA (an adapter with no routing and no tokens); and, per variant, how many
operators one forward calls from Python (torch.profiler's top-level events), which bounds what a small batch can
gain: in eager mode every call pays the dispatcher's fixed cost however little it computes.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.plans import Plan
from benchmarks.report import log
from benchmarks.sections.inference import perturb_trainable, time_variants
from benchmarks.step import build_peft, make_inputs
from benchmarks.timing import time_interleaved


def _block_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The SMoA's input in block 0 (the output of norm2) for a forward on ``x``."""
    from pointpeft.peft.adapterx import smoa_blocks

    handle = smoa_blocks(model)[0]
    seen: list[torch.Tensor] = []
    hook = handle.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return seen[0]


def _parts(model: torch.nn.Module, h: torch.Tensor, reps: int, device: torch.device) -> dict[str, Any]:
    from pointpeft.peft.adapterx import smoa_blocks

    handle = smoa_blocks(model)[0]
    pool, router, experts = handle.pool, handle.active_router, handle.pool.experts
    B, T, D = h.shape
    sub = h.reshape(B * T * pool.num_heads, pool.sub_dim)
    with torch.no_grad():
        probs = router(sub).float().softmax(-1)
        gate, idx = probs.max(-1)
    out = handle.pool(h, router).out

    def with_dispatch(mode: str, grad: bool):
        def run() -> None:
            experts.dispatch = mode
            if grad:
                s = sub.detach().requires_grad_()
                experts(s, idx, gate).backward(g_out)
            else:
                with torch.inference_mode():
                    experts(sub, idx, gate)
        return run

    g_out = torch.randn(sub.shape, generator=torch.Generator().manual_seed(0)).to(device)

    def router_fn() -> None:
        with torch.inference_mode():
            router(sub).float().softmax(-1).max(-1)

    def pg_fn() -> None:
        with torch.inference_mode():
            handle.prompt_generator(out) if handle.prompt_generator is not None else None

    def cat_fn() -> None:
        with torch.inference_mode():
            torch.cat([h, h[:, :1]], 1)

    fns = {"router + top-1": router_fn, "experts grouped (inference)": with_dispatch("grouped", False),
           "experts loop (inference)": with_dispatch("loop", False),
           "experts grouped (fwd+bwd)": with_dispatch("grouped", True),
           "experts loop (fwd+bwd)": with_dispatch("loop", True), "prompt generator": pg_fn,
           "append prompt token (cat)": cat_fn}
    try:
        stats = time_interleaved(fns, warmup=1, reps=reps, device=device)
    finally:
        experts.dispatch = "auto"
    counts = torch.bincount(idx, minlength=pool.num_experts).float()
    return {"sub_tokens": int(sub.shape[0]), "busiest_over_mean_expert": round(float(counts.max() / counts.mean()), 2),
            "ms": {k: round(v.median * 1000, 3) for k, v in stats.items()}}


def _op_calls(fn: Any) -> dict[str, Any]:
    """Operators one call of ``fn`` dispatches from Python (profiler events without a parent op) and their share of
    the profiled time: at batch 1 the added calls, not the added FLOPs, are Adapter-X's cost."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: caches (packed weights, router matrix) built outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    top = [e for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    return {"ops": len(top), "ops_ms": round(sum(e.cpu_time_total for e in top) / 1000, 2)}


def bench_smoa(plan: Plan, device: torch.device) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for model_name in plan.infer_models:
        torch.manual_seed(0)
        base = build_peft(model_name, "backbone", device).eval()
        variants: dict[str, torch.nn.Module] = {"backbone": base}
        for name, method, extra in (("adapterx", "adapterx", {}), ("adapterx (loop dispatch)", "adapterx", {}),
                                    ("adapterx (no prompt generator)", "adapterx", {"prompt_generator": False}),
                                    ("lora (merged)", "lora", {})):
            m = build_peft(model_name, method, device, peft_overrides=extra)
            m.load_state_dict(base.state_dict(), strict=False)
            perturb_trainable(m)
            m.eval()
            if method == "lora":
                from pointpeft.peft import merge

                merge(m)
            if "loop" in name:
                from pointpeft.peft.adapterx import smoa_blocks

                smoa_blocks(m)[0].pool.experts.dispatch = "loop"
            variants[name] = m
        for b in plan.infer_batches:
            x, _ = make_inputs(b, plan.npoints, 40, device)
            fns, timed = time_variants(variants, x, plan.infer_reps.get(b, 5), device, model_name, "smoa")
            for row in timed:
                if b == min(plan.infer_batches):
                    row["calls"] = _op_calls(fns[row["variant"]])
            rows += timed
            log(f"smoa {model_name} batch {b}: parts of block 0")
            h = _block_input(variants["adapterx"], x)
            parts.append({"model": model_name, "batch": b,
                          **_parts(variants["adapterx"], h, max(5, plan.infer_reps.get(b, 5)), device)})
    return {"inference": rows, "parts": parts}
