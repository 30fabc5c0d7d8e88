"""Training section: one optimisation step of full fine-tuning vs every PEFT method, timed interleaved; memory
and the profiler check from a fresh process per configuration."""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.memory import LIVE_MALLOC_ENV
from benchmarks.plans import Plan
from benchmarks.report import log
from benchmarks.step import PhaseClock, TrainStep
from benchmarks.timing import Stats, paired_ratio, time_interleaved
from benchmarks.worker import spawn_worker
from pointpeft.utils.machine import load_average


def time_train_interleaved(plan: Plan, model_name: str, configs: list[tuple[str, str]], device: torch.device,
                           label: str, saved: bool = False,
                           phases: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """Step times of several (method, precision) configs built side by side in this process and run round-robin,
    so a load spike on the shared machine hits every config of that round; ``phases``: then the phases of each
    step, round-robin as well (:func:`interleaved_phases`)."""
    steps: dict[tuple[str, str], TrainStep] = {}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for method, precision in configs:
        try:
            steps[(method, precision)] = TrainStep(model_name, method, precision, device, plan.batch, plan.npoints)
        except Exception as e:  # a method being written right now may fail: record it and carry on
            out[(method, precision)] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{label} {model_name} {method} {precision}: ERROR {out[(method, precision)]['error']}")
    log(f"{label} {model_name} {device.type}: {len(steps)} configs x {plan.rounds} interleaved rounds")
    fns = {f"{m}|{p}": st for (m, p), st in steps.items()}
    stats = time_interleaved(fns, warmup=1, reps=plan.rounds, device=device)
    for (m, p), st in steps.items():
        s = stats[f"{m}|{p}"]
        out[(m, p)] = {"step_s": s.to_dict(), "samples_per_s": s.inverse(plan.batch).to_dict(2),
                       "amp_dtype": st.amp_dtype}
        if saved:
            out[(m, p)]["saved_activations_mb"] = st.saved_activations_mb()
    if phases:
        for key, ph in interleaved_phases(steps, plan.rounds, device).items():
            out[key]["phases_interleaved_ms"] = ph
    del steps, fns
    return out


def interleaved_phases(steps: dict[tuple[str, str], TrainStep], rounds: int,
                       device: torch.device) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Wall-clock phases of every config's step, one step each per round, round-robin after the timed rounds:
    {config: {phase: [ms per round]}}, so phases of two configs can be compared as paired per-round ratios (the
    fresh-process phases are sequential, and swung by ±30% between idle runs)."""
    runs: dict[tuple[str, str], list[dict[str, float]]] = {k: [] for k in steps}
    for st in steps.values():
        st.clock = PhaseClock(st.model, device)
    try:
        for _ in range(rounds):
            for key, st in steps.items():
                st()
                runs[key].append(st.clock.phases_ms())
    finally:
        for st in steps.values():
            st.clock.remove()
            st.clock = None
    return {k: {ph: [r[ph] for r in rs] for ph in rs[0]} for k, rs in runs.items() if rs}


def paired_vs(row: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """Speed-up base/row from the per-round paired step times (same round = same load)."""
    if base is None or "step_s" not in base or "step_s" not in row:
        return {}
    pr = paired_ratio(base["step_s"]["values"], row["step_s"]["values"])
    return {"speedup": round(pr.median, 3), "speedup_min": round(pr.min, 3), "speedup_max": round(pr.max, 3)}


def bench_train(plan: Plan, methods: list[str], device: torch.device, threads: int) -> dict[str, Any]:
    profile = set(plan.profile_methods) if plan.profile_methods is not None else None
    results: list[dict[str, Any]] = []
    for model_name in plan.models:
        timing = time_train_interleaved(plan, model_name, [(m, "fp32") for m in methods], device, "train",
                                        phases=True)
        rows = {}
        for method in methods:
            cfg = {"model": model_name, "method": method, "precision": "fp32", "device": str(device),
                   "batch": plan.batch, "npoints": plan.npoints, "threads": threads, "steps": plan.mem_steps,
                   "details": True, "profile": profile is None or method in profile, "phase_steps": plan.phase_steps}
            t0 = time.perf_counter()
            mem = spawn_worker(cfg)
            row = {"config": cfg, **timing.get((method, "fp32"), {})}
            if "error" in mem:
                row.setdefault("error", mem["error"])
                log(f"train memory {model_name} {method}: ERROR {mem['error']}")
            else:
                row["isolated_step_s"] = Stats.of(mem.pop("step_s")).to_dict()
                row.update(mem)
                if plan.live_memory and device.type == "cpu":
                    live = spawn_worker({**cfg, "details": False, "profile": False}, extra_env=LIVE_MALLOC_ENV)
                    if "error" not in live:
                        row["live_peak_delta_mb"] = live["peak_delta_mb"]
                log(f"train memory {model_name} {method}: peak +{mem['peak_delta_mb']} MiB, "
                    f"live +{row.get('live_peak_delta_mb')} MiB ({time.perf_counter() - t0:.0f} s)")
            row["load_after"] = load_average()
            rows[method] = row
        for method, row in rows.items():
            if method != "full" and "error" not in row:
                v = paired_vs(row, rows.get("full"))
                full = rows.get("full", {})
                if v and full.get("peak_delta_mb"):
                    v["mem_ratio"] = round(row["peak_delta_mb"] / full["peak_delta_mb"], 3)
                    v["mem_ratio_total"] = round(row["peak_mem_mb"] / full["peak_mem_mb"], 3)
                if v and full.get("live_peak_delta_mb") and "live_peak_delta_mb" in row:
                    v["live_mem_ratio"] = round(row["live_peak_delta_mb"] / full["live_peak_delta_mb"], 3)
                if v and "isolated_step_s" in row and "isolated_step_s" in full:
                    v["isolated_speedup"] = round(full["isolated_step_s"]["median"]
                                                  / row["isolated_step_s"]["median"], 3)
                    v["isolated_steps"] = row["isolated_step_s"]["n"]
                if v and full.get("saved_activations_mb"):
                    v["saved_ratio"] = round(row["saved_activations_mb"] / full["saved_activations_mb"], 3)
                row["vs_full"] = v
            results.append(row)
    return {"batch": plan.batch, "npoints": plan.npoints, "rounds": plan.rounds,
            "timing_method": "all configs of a model built in one process, one step each per round, round-robin; "
                             "speed-ups are medians of per-round ratios",
            "memory_method": ("peak RSS (VmHWM, reset after a warm-up of the libraries) of a fresh subprocess "
                              "per config, minus its RSS before the model was built; 'live': the same with glibc's "
                              "caching of freed memory off (" + " ".join(f"{k}={v}" for k, v in LIVE_MALLOC_ENV.items())
                              + "), which follows the live tensors" if device.type == "cpu" else
                              "torch.cuda.max_memory_allocated in a fresh subprocess per config"),
            "results": results}
