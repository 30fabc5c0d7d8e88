"""Inference section: plain backbone vs Adapter-X vs merged methods, from points to logits, timed interleaved."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.plans import Plan
from benchmarks.report import log
from benchmarks.step import build_peft, make_inputs
from benchmarks.timing import paired_ratio, time_interleaved


def inference_fns(models: dict[str, torch.nn.Module], x: torch.Tensor) -> dict[str, Any]:
    """{name: a no-argument call of the model's inference forward on ``x``} for interleaved timing."""
    fns = {}
    for name, mdl in models.items():
        def fwd(mdl: torch.nn.Module = mdl, x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                mdl(x)
        fns[name] = fwd
    return fns


def bench_inference(plan: Plan, methods: list[str], device: torch.device) -> dict[str, Any]:
    from pointpeft.peft import merge
    from pointpeft.registry import PEFT_METHODS

    if plan.infer_methods is not None:
        wanted = [m for m in plan.infer_methods if m in methods]
    else:
        wanted = [m for m in methods if m == "adapterx" or getattr(PEFT_METHODS.get(m), "mergeable", False)]
    rows = []
    for model_name in plan.infer_models:
        torch.manual_seed(0)
        base = build_peft(model_name, "backbone", device).eval()
        variants: dict[str, torch.nn.Module] = {"backbone": base}
        for m in wanted:
            try:
                pm = build_peft(model_name, m, device)
                pm.load_state_dict(base.state_dict(), strict=False)  # same backbone weights
                perturb_trainable(pm)
                pm.eval()
                if getattr(PEFT_METHODS.get(m), "mergeable", False):
                    merge(pm)
                    variants[f"{m} (merged)"] = pm
                else:
                    variants[m] = pm
            except Exception as e:  # a method being written right now may fail: record, carry on
                rows.append({"model": model_name, "variant": m, "error": f"{type(e).__name__}: {e}"})
        for b in plan.infer_batches:
            x, _ = make_inputs(b, plan.npoints, 40, device)
            rows += time_variants(variants, x, plan.infer_reps.get(b, 5), device, model_name, "inference")[1]
    return {"rows": rows}


def time_variants(variants: dict[str, torch.nn.Module], x: torch.Tensor, reps: int, device: torch.device,
                  model_name: str, section: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Time every variant's forward on ``x``, interleaved; one row per variant, each but the backbone with its
    paired ratio to the backbone (median and quartiles). Returns the timed functions too (for operator counts)."""
    fns = inference_fns(variants, x)
    log(f"{section} {model_name} batch {x.shape[0]}: {list(fns)}")
    stats = time_interleaved(fns, warmup=2, reps=reps, device=device)
    rows = []
    for name, st in stats.items():
        row = {"model": model_name, "variant": name, "batch": x.shape[0], "ms": st.scaled(1000).to_dict(2)}
        if name != "backbone":
            pr = paired_ratio(st.values, stats["backbone"].values)
            row["vs_backbone"] = {"median": round(pr.median, 3), "q1": round(pr.q1, 3), "q3": round(pr.q3, 3)}
        rows.append(row)
    return fns, rows


def perturb_trainable(model: torch.nn.Module) -> None:
    """Give zero-initialised adapter weights non-zero values (a merged LoRA must fold something real)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
