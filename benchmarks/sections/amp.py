"""Mixed-precision section: fp32 vs bf16 autocast vs ``auto``, training step and inference."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.plans import Plan
from benchmarks.precision import auto_dtype, autocast, precision_dtype
from benchmarks.report import log
from benchmarks.sections.train import paired_vs, time_train_interleaved
from benchmarks.step import build_peft, make_inputs
from benchmarks.timing import paired_ratio, time_interleaved


def bench_amp(plan: Plan, methods: list[str], device: torch.device) -> dict[str, Any]:
    dtype, why = auto_dtype(device)
    amp_methods = [m for m in plan.amp_methods if m in methods]
    precisions = ["fp32", "bf16", "auto"]
    train = []
    for model_name in plan.amp_models:
        configs = [(m, p) for m in amp_methods for p in precisions]
        timing = time_train_interleaved(plan, model_name, configs, device, "amp", saved=True)
        for (m, p), row in timing.items():
            row = {"config": {"model": model_name, "method": m, "precision": p, "device": str(device)}, **row}
            if p != "fp32":
                row["vs_fp32"] = paired_vs(row, timing.get((m, "fp32")))
            train.append(row)
    infer = []
    for model_name in plan.amp_models:
        for method in ["backbone"] + [m for m in amp_methods if m != "full"]:
            model = build_peft(model_name, method, device).eval()
            for b in plan.infer_batches:
                x, _ = make_inputs(b, plan.npoints, 40, device)
                fns = {}
                for prec in precisions:
                    pd = precision_dtype(prec, device)

                    def fwd(pd=pd, x=x, model=model) -> None:
                        with torch.inference_mode(), autocast(device, pd):
                            model(x)
                    fns[prec] = fwd
                log(f"amp inference {model_name} {method} batch {b}")
                stats = time_interleaved(fns, warmup=1, reps=plan.infer_reps.get(b, 5), device=device)
                row = {"model": model_name, "method": method, "batch": b,
                       "ms": {k: v.scaled(1000).to_dict(2) for k, v in stats.items()}}
                for prec in ("bf16", "auto"):
                    row[f"{prec}_speedup"] = round(paired_ratio(stats["fp32"].values, stats[prec].values).median, 3)
                infer.append(row)
    return {"auto_dtype": str(dtype).replace("torch.", "") if dtype is not None else "float32", "auto_reason": why,
            "rounds": plan.rounds, "train": train, "inference": infer}
