#!/usr/bin/env python
"""Speed and memory benchmarks of pointpeft on this machine (issue 10).

    python tools/benchmark.py --quick      # < 5 min on 2 cores: small model, N=1024, fewer repetitions (make bench)
    python tools/benchmark.py --full       # the whole grid: both model sizes, N in {1024, 2048, 8192}, all methods
    python tools/benchmark.py --smoke      # seconds: tiny model, one repetition (used by the test suite)

Sections (``--sections``): ``tokenizer`` (FPS per backend, kNN, grouping), ``train`` (one optimisation step, full
fine-tuning vs every registered PEFT method: samples/s, peak memory, saved activations, profiler check that no
backward runs through the frozen encoder), ``amp`` (fp32 vs bf16 autocast vs auto), ``inference`` (backbone vs
Adapter-X vs merged LoRA/MoSA, batch 32 and 1), ``data`` (data set readers with 0 and 2 workers).

Method: warm-up runs, then repetitions; medians with spread (quartiles, min/max). Candidates compared with each
other are timed interleaved (round-robin), and ratios are medians of per-round ratios, so load on a shared machine
hits both sides. Peak memory of each training configuration is measured in a fresh subprocess: its peak RSS
(``VmHWM``, reset after loading the libraries; ``getrusage`` keeps the parent's size across exec) minus its RSS before
the model was built (CUDA: ``torch.cuda.max_memory_allocated``). Writes ``benchmarks/results-<hostname>.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pointpeft.utils.benchmark import (  # noqa: E402
    Stats,
    Timer,
    bf16_native_flags,
    current_rss_bytes,
    load_average,
    machine_info,
    paired_ratio,
    peak_rss_bytes,
    reset_peak_rss,
    time_fn,
    time_interleaved,
)

RESULT_TAG = "@@BENCH_RESULT "
MODELNET_H5 = Path("/work/shared/data/modelnet40_ply_hdf5_1024")
MIB = 2**20


@dataclass
class Plan:
    """What one mode measures."""

    name: str
    models: list[str]
    batch: int = 32
    npoints: int = 1024
    token_grid: list[tuple[int, int, int]] = field(default_factory=list)  # (N points, groups, group size)
    token_reps: int = 5
    kdline_scan: bool = True
    methods: list[str] | None = None  # None: every registered method
    rounds: int = 4  # interleaved rounds of training steps (one step of every config per round)
    mem_steps: int = 1  # isolated steps in the fresh memory-measuring subprocess (after one warm-up step)
    phase_steps: int = 3  # steps whose wall-clock phases (tokenizer, blocks, backward...) are reported, median
    live_memory: bool = True  # also measure with glibc's caching of freed memory off (LIVE_MALLOC_ENV)
    amp_models: list[str] = field(default_factory=list)
    amp_methods: list[str] = field(default_factory=lambda: ["full", "adapterx"])
    infer_models: list[str] = field(default_factory=list)
    infer_methods: list[str] | None = None  # None: adapterx + mergeable methods (merged)
    infer_batches: list[int] = field(default_factory=lambda: [32, 1])
    infer_reps: dict[int, int] = field(default_factory=lambda: {32: 7, 1: 21})
    data_batches: int = 20
    data_sets: list[str] = field(default_factory=lambda: ["modelnet40", "synthetic_shapes"])
    synthetic_samples: int | None = None
    profile_methods: list[str] | None = None  # None: all


PLANS: dict[str, Plan] = {
    "smoke": Plan("smoke", models=["point_mae_tiny"], batch=4, npoints=256, token_grid=[(256, 16, 8)], token_reps=2,
                  kdline_scan=False, methods=["full", "adapterx"], rounds=2, amp_models=["point_mae_tiny"], live_memory=False, phase_steps=1,
                  amp_methods=["adapterx"], infer_models=["point_mae_tiny"], infer_batches=[4, 1],
                  infer_reps={4: 2, 1: 2}, data_batches=2, data_sets=["synthetic_shapes"], synthetic_samples=48),
    "quick": Plan("quick", models=["point_mae_small"], token_grid=[(1024, 64, 32)], rounds=4,
                  amp_models=["point_mae_small"], infer_models=["point_mae_small"], data_batches=15,
                  profile_methods=["full", "adapterx", "linear"]),
    "full": Plan("full", models=["point_mae_small", "point_mae"],
                 token_grid=[(1024, 64, 32), (2048, 128, 32), (8192, 512, 32)], token_reps=7, rounds=6, mem_steps=2,
                 amp_models=["point_mae_small", "point_mae"], infer_models=["point_mae_small", "point_mae"],
                 infer_reps={32: 9, 1: 31}, data_batches=30),
}


# ---------------------------------------------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------------------------------------------
def auto_dtype(device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype ``--amp auto`` picks here, and why. Uses pointpeft.engine.amp when it exists."""
    try:
        from pointpeft.engine import amp as engine_amp  # written by the engine helper
    except ImportError:
        engine_amp = None
    resolver = getattr(engine_amp, "resolve_amp_dtype", None) if engine_amp is not None else None
    if callable(resolver):
        try:
            dtype = resolver("auto", device)
            return dtype, "pointpeft.engine.amp.resolve_amp_dtype"
        except TypeError:
            pass
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), "cuda"
    flags = bf16_native_flags()
    return (torch.bfloat16, f"cpu flags {flags}") if flags else (None, "no native bf16 in /proc/cpuinfo")


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return auto_dtype(device)[0]
    raise ValueError(f"unknown precision {precision!r} (fp32 | bf16 | auto)")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# training-step worker (runs in a fresh subprocess)
# ---------------------------------------------------------------------------------------------------------------
def make_inputs(batch: int, npoints: int, num_classes: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, npoints, 3, generator=gen) * 2 - 1
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return x.to(device), y.to(device)


def build_peft(model_name: str, method: str, device: torch.device, num_classes: int = 40) -> torch.nn.Module:
    from pointpeft.models import build_point_transformer
    from pointpeft.peft import get_peft_model

    model = build_point_transformer(model_name, num_classes=num_classes)
    if method != "backbone":
        model = get_peft_model(model, {"type": method})
    return model.to(device)


def encoder_backward_check(prof: Any, point_rows: int, groups: int, widths: set[int]) -> dict[str, Any]:
    """Backward nodes whose kernels touch the encoder's per-point tensors: (B*G*M, C) rows or (B*G, M, C) with C
    one of the encoder's widths. Autograd nodes show up as ``autograd::engine::evaluate_function: XBackward0``
    events; their kernels are children. Zero nodes = backward stops before the encoder.
    """

    def per_point(shape: Any) -> bool:
        if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(d, int) for d in shape):
            return False
        if len(shape) == 2:
            return shape[0] == point_rows and shape[1] in widths
        return len(shape) == 3 and shape[0] == groups and shape[0] * shape[1] == point_rows and shape[2] in widths

    nodes, total_us, backward_us = set(), 0.0, 0.0
    for evt in prof.events():
        if not evt.name.startswith("autograd::engine::evaluate_function:"):
            continue
        backward_us += evt.cpu_time_total
        stack, hit = list(evt.cpu_children), False
        while stack and not hit:
            child = stack.pop()
            hit = any(per_point(s) for s in (child.input_shapes or []))
            stack.extend(child.cpu_children)
        if hit:
            nodes.add(evt.name.removeprefix("autograd::engine::evaluate_function:").strip())
            total_us += evt.cpu_time_total
    return {"encoder_backward_nodes": sorted(nodes), "encoder_backward_ms": round(total_us / 1000, 2),
            "backward_ms": round(backward_us / 1000, 2)}


def top_ops(prof: Any, n: int = 8) -> list[dict[str, Any]]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 2), "calls": e.count} for e in rows]


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                           device: torch.device) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for backward in one training forward."""
    from pointpeft.peft import training_forward

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        training_forward(model, x)
    return sum(seen.values())


class PhaseClock:
    """Wall-clock phases of one training step from forward hooks: tokenizer, blocks, head, backward, optimizer."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.t: dict[str, float] = {}
        self.device = device
        inner = model
        self.handles = [
            inner.register_forward_pre_hook(self._mark("start")),
            inner.blocks.register_forward_pre_hook(self._mark("blocks_in")),
            inner.blocks.register_forward_hook(self._mark_post("blocks_out")),
            inner.register_forward_hook(self._mark_post("forward_out")),
        ]

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _mark(self, name: str) -> Callable:
        def hook(module: Any, args: Any) -> None:
            self.t[name] = self._now()
        return hook

    def _mark_post(self, name: str) -> Callable:
        def hook(module: Any, args: Any, out: Any) -> None:
            self.t[name] = self._now()
        return hook

    def mark(self, name: str) -> None:
        self.t[name] = self._now()

    def phases_ms(self) -> dict[str, float]:
        t = self.t
        keys = [("tokenizer", "start", "blocks_in"), ("blocks_forward", "blocks_in", "blocks_out"),
                ("head_forward", "blocks_out", "forward_out"), ("loss", "forward_out", "loss"),
                ("backward", "loss", "backward"), ("optimizer", "backward", "optimizer")]
        return {k: round(1000 * (t[b] - t[a]), 2) for k, a, b in keys if a in t and b in t}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class TrainStep:
    """One training configuration: model, AdamW over the trainable parameters, and the step itself
    (zero_grad, forward + task loss + weighted aux losses via ``training_forward``, backward, optimizer step)."""

    def __init__(self, model_name: str, method: str, precision: str, device: torch.device, batch: int,
                 npoints: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.x, self.y = make_inputs(batch, npoints, 40, device, seed)
        self.dtype = precision_dtype(precision, device)
        self.model = build_peft(model_name, method, device).train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=5e-4,
                                     weight_decay=0.05)
        self.clock: PhaseClock | None = None

    @property
    def amp_dtype(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.dtype is not None else "float32"

    def __call__(self) -> None:
        from pointpeft.peft import training_forward

        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            logits, aux = training_forward(self.model, self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            if aux:
                loss = loss + sum(aux.values())
        if self.clock is not None:
            self.clock.mark("loss")
        loss.backward()
        if self.clock is not None:
            self.clock.mark("backward")
        self.opt.step()
        if self.clock is not None:
            self.clock.mark("optimizer")

    def phases(self, steps: int = 3) -> dict[str, float]:
        """Wall-clock phases of a step (ms), median over ``steps`` steps."""
        self.clock = PhaseClock(self.model, self.device)
        runs: list[dict[str, float]] = []
        try:
            for _ in range(steps):
                self()
                runs.append(self.clock.phases_ms())
        finally:
            self.clock.remove()
            self.clock = None
        return {k: round(Stats.of([r[k] for r in runs]).median, 2) for k in runs[0]}

    def saved_activations_mb(self) -> float:
        return round(saved_activation_bytes(self.model, self.x, self.dtype, self.device) / MIB, 1)


def run_train_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One training configuration in this (fresh) process: peak memory, a few isolated steps, saved activations,
    phases and (``profile``) a torch.profiler check that no backward runs through the encoder."""
    from pointpeft.peft import trainable_parameter_report

    torch.set_num_threads(int(cfg["threads"]))
    device = torch.device(cfg["device"])
    # Load the lazily initialised libraries (numba's FPS JIT, oneDNN kernels) with a throwaway tiny model first, so
    # that the baseline below already holds them and the peak over it is what this configuration needs.
    TrainStep("point_mae_tiny", cfg["method"], cfg["precision"], device, 2, 64)()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    peak_before = peak_rss_bytes()
    peak_reset = reset_peak_rss()
    base_rss = current_rss_bytes()
    step = TrainStep(cfg["model"], cfg["method"], cfg["precision"], device, cfg["batch"], cfg["npoints"])
    timer = Timer(device)
    times = [timer(step) for _ in range(1 + int(cfg["steps"]))][1:]
    out: dict[str, Any] = {"step_s": times, "trainable": trainable_parameter_report(step.model)["trainable"],
                           "amp_dtype": step.amp_dtype}
    if device.type == "cuda":
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        out["peak_delta_mb"] = round((torch.cuda.max_memory_allocated(device) - base_mem) / MIB, 1)
    else:
        peak = peak_rss_bytes()
        out["peak_mem_mb"] = round(peak / MIB, 1)
        out["peak_delta_mb"] = round((peak - base_rss) / MIB, 1)
        out["base_rss_mb"] = round(base_rss / MIB, 1)
        out["import_peak_mb"] = round(peak_before / MIB, 1)
        out["peak_reset"] = peak_reset
    if cfg.get("details"):
        out["saved_activations_mb"] = step.saved_activations_mb()
        out["phases_ms"] = step.phases(cfg.get("phase_steps", 3))
    if cfg.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts, record_shapes=True) as prof:
            step()
        arch = step.model.cfg
        groups = cfg["batch"] * arch.num_group
        widths = {3, 128, 256, 512, arch.encoder_dims}
        out.update(encoder_backward_check(prof, groups * arch.group_size, groups, widths))
        out["top_ops"] = top_ops(prof)
    return out


def worker_main(arg: str) -> None:
    cfg = json.loads(arg)
    try:
        res = run_train_worker(cfg)
    except Exception as e:  # reported to the parent, which records it and carries on
        res = {"error": f"{type(e).__name__}: {e}"}
    print(RESULT_TAG + json.dumps(res), flush=True)


#: glibc malloc settings of the "live" memory measurement: a fixed mmap threshold turns off glibc's dynamic threshold,
#: so every freed large tensor goes back to the OS at once and the RSS follows the live tensors.
LIVE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def spawn_worker(cfg: dict[str, Any], timeout: float = 900.0, extra_env: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **(extra_env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}


# ---------------------------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_average()}] {msg}", file=sys.stderr, flush=True)


def registered_methods() -> list[str]:
    import pointpeft.peft  # noqa: F401  (registers the methods)
    from pointpeft.registry import PEFT_METHODS

    return list(PEFT_METHODS.keys())


def bench_tokenizer(plan: Plan, device: torch.device) -> dict[str, Any]:
    from pointpeft.models.tokenizer import Group
    from pointpeft.ops import available_fps_backends, farthest_point_sample, knn_query, resolve_fps_backend
    from pointpeft.ops.fps import FPS_BACKENDS, gather_points

    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    backends = available_fps_backends(device)
    for n, g, m in plan.token_grid:
        xyz = (torch.rand(plan.batch, n, 3, generator=gen) * 2 - 1).to(device)
        ref = farthest_point_sample(xyz, g, backend="torch")
        default = resolve_fps_backend("auto", xyz)
        fns = {be: (lambda be=be, xyz=xyz, g=g: farthest_point_sample(xyz, g, backend=be)) for be in backends}
        log(f"tokenizer {device.type} N={n} G={g}: FPS backends {backends}")
        stats = time_interleaved(fns, warmup=1, reps=plan.token_reps, device=device)
        for be, st in stats.items():
            exact = bool(torch.equal(farthest_point_sample(xyz, g, backend=be), ref))
            rows.append({"op": "fps", "n": n, "groups": g, "backend": be, "default": be == default,
                         "exact": exact, "ref_exact_backend": FPS_BACKENDS[be].exact, "ms": st.scaled(1000).to_dict()})
        if plan.kdline_scan and device.type == "cpu" and "fpsample" in backends:
            import fpsample
            import numpy as np

            pts = xyz.cpu().numpy()
            for h in range(1, 10):
                if 2**h > n:
                    break
                st = time_fn(lambda h=h, g=g, pts=pts: np.stack(
                    [fpsample.bucket_fps_kdline_sampling(p, g, h, start_idx=0) for p in pts]),
                    warmup=1, reps=plan.token_reps, device=device)
                rows.append({"op": "fps", "n": n, "groups": g, "backend": f"fpsample_kdline_h{h}", "default": False,
                             "exact": None, "ms": st.scaled(1000).to_dict()})
        centers = gather_points(xyz, ref)
        st = time_fn(lambda m=m, xyz=xyz, c=centers: knn_query(m, xyz, c), warmup=1, reps=plan.token_reps,
                     device=device)
        rows.append({"op": "knn", "n": n, "groups": g, "k": m, "backend": "torch", "ms": st.scaled(1000).to_dict()})
        group = Group(g, m).to(device)
        st = time_fn(lambda group=group, xyz=xyz: group(xyz), warmup=1, reps=plan.token_reps, device=device)
        rows.append({"op": "group", "n": n, "groups": g, "k": m, "backend": f"auto={default}",
                     "ms": st.scaled(1000).to_dict()})
    return {"batch": plan.batch, "rows": rows}


def time_train_interleaved(plan: Plan, model_name: str, configs: list[tuple[str, str]], device: torch.device,
                           label: str, saved: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """Step times of several (method, precision) configs built side by side in this process and run round-robin,
    so a load spike on the shared machine hits every config of that round."""
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
    del steps, fns
    return out


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
        timing = time_train_interleaved(plan, model_name, [(m, "fp32") for m in methods], device, "train")
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
                _perturb_trainable(pm)
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
            fns = {}
            for name, mdl in variants.items():
                def fwd(mdl=mdl, x=x) -> None:
                    with torch.inference_mode():
                        mdl(x)
                fns[name] = fwd
            log(f"inference {model_name} batch {b}: {list(fns)}")
            stats = time_interleaved(fns, warmup=2, reps=plan.infer_reps.get(b, 5), device=device)
            for name, st in stats.items():
                row = {"model": model_name, "variant": name, "batch": b, "ms": st.scaled(1000).to_dict(2)}
                if name != "backbone":
                    pr = paired_ratio(st.values, stats["backbone"].values)
                    row["vs_backbone"] = {"median": round(pr.median, 3), "q1": round(pr.q1, 3),
                                          "q3": round(pr.q3, 3)}
                rows.append(row)
    return {"rows": rows}


def _perturb_trainable(model: torch.nn.Module) -> None:
    """Give zero-initialised adapter weights non-zero values (a merged LoRA must fold something real)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)


def bench_data(plan: Plan, train: dict[str, Any] | None) -> dict[str, Any]:
    from pointpeft.data import build_dataloader, build_dataset

    specs: list[tuple[str, dict[str, Any]]] = []
    for name in plan.data_sets:
        if name == "modelnet40":
            if not MODELNET_H5.is_dir():
                specs.append((name, {"skip": f"{MODELNET_H5} not found"}))
                continue
            specs.append((name, {"type": "modelnet40", "root": str(MODELNET_H5), "split": "train",
                                 "npoints": plan.npoints, "transforms": [{"type": "scale_translate"}]}))
        elif name == "synthetic_shapes":
            node = {"type": "synthetic_shapes", "split": "train", "npoints": plan.npoints,
                    "transforms": [{"type": "scale_translate"}]}
            if plan.synthetic_samples:
                node["num_samples"] = plan.synthetic_samples
            specs.append((name, node))
    rows = []
    for name, node in specs:
        if "skip" in node:
            rows.append({"dataset": name, "skipped": node["skip"]})
            continue
        t0 = time.perf_counter()
        ds = build_dataset(node)
        build_s = time.perf_counter() - t0
        for workers in (0, 2):
            loader = build_dataloader(ds, plan.batch, shuffle=True, num_workers=workers, drop_last=True)
            n_batches = min(plan.data_batches, len(loader) - 1)
            it = iter(loader)
            t0 = time.perf_counter()
            next(it)  # worker start-up and first batch
            first_s = time.perf_counter() - t0
            times = []
            for _ in range(n_batches):
                t0 = time.perf_counter()
                next(it)
                times.append(time.perf_counter() - t0)
            del it, loader
            st = Stats.of(times)
            sps = plan.batch * len(times) / sum(times)
            log(f"data {name} workers={workers}: {sps:.0f} samples/s")
            rows.append({"dataset": name, "size": len(ds), "workers": workers, "build_s": round(build_s, 2),
                         "first_batch_s": round(first_s, 3), "batch_ms": st.scaled(1000).to_dict(2),
                         "samples_per_s": round(sps, 1)})
    train_sps = {}
    if train:
        for r in train["results"]:
            c = r["config"]
            if "samples_per_s" in r and c["method"] in ("full", "adapterx"):
                train_sps[f"{c['model']} {c['method']}"] = r["samples_per_s"]["median"]
    for row in rows:
        if "samples_per_s" in row and train_sps:
            row["vs_fastest_train"] = round(row["samples_per_s"] / max(train_sps.values()), 1)
    return {"rows": rows, "train_samples_per_s": train_sps}


# ---------------------------------------------------------------------------------------------------------------
# targets and tables
# ---------------------------------------------------------------------------------------------------------------
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> None:
        if res["mode"] == "smoke":  # tiny sizes: the numbers exercise the tool, they say nothing about targets
            met, note = None, "smoke mode: not a measurement"
        out.append({"target": name, "value": value, "goal": goal, "met": met, "note": note})

    for dev, sec in res.get("devices", {}).items():
        tok = sec.get("tokenizer")
        if tok and dev == "cpu":
            for n in sorted({r["n"] for r in tok["rows"]}):
                fps = [r for r in tok["rows"] if r["op"] == "fps" and r["n"] == n]
                default = next((r for r in fps if r["default"]), None)
                fs = [r for r in fps if r["backend"].startswith("fpsample")]
                if default and fs:
                    best = min(fs, key=lambda r: r["ms"]["median"])
                    v = default["ms"]["median"] / best["ms"]["median"]
                    add(f"FPS N={n}: default ({default['backend']}) / fpsample fastest ({best['backend']})",
                        round(v, 3), "<= 1.2", v <= 1.2)
        tr = sec.get("train")
        if tr:
            for r in tr["results"]:
                c = r["config"]
                if c["method"] == "adapterx" and r.get("vs_full"):
                    v = r["vs_full"]
                    add(f"train {c['model']} {dev}: Adapter-X speed-up vs full", v["speedup"], ">= 2.0",
                        v["speedup"] >= 2.0, f"per-round range {v['speedup_min']}-{v['speedup_max']}")
                    if "mem_ratio" in v:
                        add(f"train {c['model']} {dev}: Adapter-X peak memory / full", v["mem_ratio"], "<= 0.6",
                            v["mem_ratio"] <= 0.6, f"peak RSS over pre-build RSS, default allocator; whole process "
                            f"{v['mem_ratio_total']}; saved activations {v.get('saved_ratio')}")
                    if "live_mem_ratio" in v:
                        add(f"train {c['model']} {dev}: Adapter-X live peak memory / full", v["live_mem_ratio"],
                            "<= 0.6", v["live_mem_ratio"] <= 0.6, "glibc caching of freed memory off")
                if c["method"] != "full" and "encoder_backward_nodes" in r:
                    nodes = r["encoder_backward_nodes"]
                    add(f"train {c['model']} {dev} {c['method']}: no backward through the encoder", len(nodes),
                        "0 backward nodes on per-point tensors", not nodes, ", ".join(nodes))
        amp = sec.get("amp")
        if amp:
            for r in amp["train"]:
                c = r["config"]
                v = r.get("vs_fp32")
                if not v:
                    continue
                if c["precision"] == "auto":
                    add(f"amp train {c['model']} {c['method']} {dev}: auto ({r['amp_dtype']}) vs fp32", v["speedup"],
                        ">= 1.0 (5% noise band)", v["speedup"] >= 0.95)
                if c["precision"] == "bf16" and res["meta"].get("bf16_native") and dev == "cpu":
                    add(f"amp train {c['model']} {c['method']} {dev}: bf16 vs fp32 (native bf16)", v["speedup"],
                        ">= 2.0", v["speedup"] >= 2.0)
        inf = sec.get("inference")
        if inf:
            for r in inf["rows"]:
                if "vs_backbone" not in r:
                    continue
                v = r["vs_backbone"]["median"]
                if r["variant"] == "adapterx":
                    add(f"inference {r['model']} batch {r['batch']} {dev}: Adapter-X / backbone", v, "<= 1.10",
                        v <= 1.10)
                elif r["variant"].endswith("(merged)"):
                    add(f"inference {r['model']} batch {r['batch']} {dev}: {r['variant']} / backbone", v,
                        "1.00 (within 5% noise)", abs(v - 1) <= 0.05)
    return out


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(d: dict[str, Any], digits: int = 1) -> str:
    return f"{d['median']:.{digits}f} [{d['min']:.{digits}f}–{d['max']:.{digits}f}]"


def render(res: dict[str, Any]) -> str:
    meta = res["meta"]
    parts = [f"## Benchmarks on {meta['host']} ({res['mode']})",
             f"{meta['cpu_model']}, {meta['cpu_count']} cores, torch {meta['torch']}, threads {meta['torch_threads']}, "
             f"ATen CPU capability {meta['cpu_capability']}, native bf16: {meta['bf16_native']} "
             f"{meta['bf16_native_flags']}, load average before/after {meta['loadavg']} / {res.get('loadavg_end')}, "
             f"{meta['date']}. Times: median [min–max]."]
    for dev, sec in res["devices"].items():
        if "tokenizer" in sec:
            tok = sec["tokenizer"]
            rows = [[f"{r['n']}→{r['groups']}", r["op"], r["backend"] + (" (default)" if r.get("default") else ""),
                     {True: "yes", False: "no", None: "-"}[r.get("exact")], fmt_ms(r["ms"], 2)] for r in tok["rows"]]
            parts.append(f"### Tokenizer, {dev}, B={tok['batch']}\n" +
                         md_table(["N→G", "op", "backend", "exact", "ms"], rows))
        if "train" in sec:
            tr = sec["train"]
            rows = []
            for r in tr["results"]:
                c = r["config"]
                if "step_s" not in r:
                    rows.append([c["model"], c["method"], "error: " + r.get("error", "")[:90]] + [""] * 7)
                    continue
                v = r.get("vs_full", {})
                ph = r.get("phases_ms", {})
                mem = f"{r['peak_delta_mb']:.0f} ({r['peak_mem_mb']:.0f})" if "peak_delta_mb" in r else "-"
                live = f"{r['live_peak_delta_mb']:.0f}" if "live_peak_delta_mb" in r else "-"
                vs = "1 / 1 / 1" if c["method"] == "full" else (
                    f"{v.get('speedup', 0):.2f}x / {v.get('mem_ratio', float('nan')):.2f} / "
                    f"{v.get('live_mem_ratio', float('nan')):.2f}" if v else "-")
                rows.append([c["model"], c["method"], f"{r.get('trainable', 0):,}", fmt_ms(r["step_s"], 3),
                             f"{r['samples_per_s']['median']:.1f}", mem, live, r.get("saved_activations_mb", "-"), vs,
                             " ".join(f"{k.split('_')[0][:5]} {ms:.0f}" for k, ms in ph.items())])
            parts.append(f"### Training step, {dev}, batch {tr['batch']}, {tr['npoints']} points, fp32\n"
                         f"Time: {tr['timing_method']} ({tr['rounds']} rounds). Memory: {tr['memory_method']}.\n" +
                         md_table(["model", "method", "trainable", "s/step", "samples/s", "peak MiB (process)",
                                   "live peak MiB", "saved act. MiB", "vs full: speed / mem / live mem",
                                   "phases ms (median step)"], rows))
        if "amp" in sec:
            amp = sec["amp"]
            rows = []
            for r in amp["train"]:
                c = r["config"]
                if "step_s" not in r:
                    continue
                v = r.get("vs_fp32", {})
                rows.append([c["model"], c["method"], c["precision"], r["amp_dtype"], fmt_ms(r["step_s"], 3),
                             f"{v['speedup']:.2f}x" if v else "1", r.get("saved_activations_mb", "-")])
            parts.append(f"### Mixed precision, {dev} (auto = {amp['auto_dtype']}: {amp['auto_reason']})\n"
                         f"Training ({amp['rounds']} interleaved rounds):\n" +
                         md_table(["model", "method", "precision", "dtype", "s/step", "vs fp32", "saved act. MiB"],
                                  rows))
            rows = [[r["model"], r["method"], r["batch"], fmt_ms(r["ms"]["fp32"]), fmt_ms(r["ms"]["bf16"]),
                     fmt_ms(r["ms"]["auto"]), f"{r['bf16_speedup']:.2f}x", f"{r['auto_speedup']:.2f}x"]
                    for r in amp["inference"]]
            parts.append("Inference (ms):\n" + md_table(["model", "model variant", "batch", "fp32", "bf16", "auto",
                                                         "bf16 vs fp32", "auto vs fp32"], rows))
        if "inference" in sec:
            rows = [[r["model"], r["variant"], r.get("batch", "-"),
                     fmt_ms(r["ms"], 2) if "ms" in r else "error: " + r.get("error", "")[:80],
                     (f"{r['vs_backbone']['median']:.3f} [{r['vs_backbone']['q1']:.3f}–{r['vs_backbone']['q3']:.3f}]"
                      if "vs_backbone" in r else "1")] for r in sec["inference"]["rows"]]
            parts.append(f"### Inference latency, {dev}, fp32\n" +
                         md_table(["model", "variant", "batch", "ms", "vs backbone (median [IQR] of paired ratios)"],
                                  rows))
    if "data" in res:
        d = res["data"]
        rows = [[r["dataset"], "skipped: " + r["skipped"]] + [""] * 5 if "skipped" in r else
                [r["dataset"], r["size"], r["workers"], f"{r['build_s']:.1f}", f"{r['first_batch_s']:.2f}",
                 f"{r['samples_per_s']:.0f}", r.get("vs_fastest_train", "-")] for r in d["rows"]]
        parts.append("### Data loading (batch of the training step, scale_translate augmentation)\n"
                     f"Training samples/s for comparison: {d['train_samples_per_s']}\n" +
                     md_table(["data set", "size", "workers", "build s", "first batch s", "samples/s",
                               "x fastest training step"], rows))
    if res.get("targets"):
        rows = [[t["target"], t["value"], t["goal"], {True: "met", False: "MISSED", None: "-"}[t["met"]], t["note"]]
                for t in res["targets"]]
        parts.append("### Targets\n" + md_table(["target", "value", "goal", "status", "note"], rows))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="the default")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke")
    ap.add_argument("--sections", default="tokenizer,train,amp,inference,data",
                    help="comma-separated subset of tokenizer,train,amp,inference,data")
    ap.add_argument("--models", help="comma-separated point transformers (overrides the mode's)")
    ap.add_argument("--methods", help="comma-separated PEFT methods (default: every registered one)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of training steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="all = cpu (+ cuda if present)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results-<hostname>.json, -full/-smoke added for "
                                  "those modes; '-' for none)")
    ap.add_argument("--markdown", help="also write the markdown tables to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    plan = copy.deepcopy(PLANS[args.mode or "quick"])
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        plan = replace(plan, models=models, amp_models=models, infer_models=models)
    if args.rounds:
        plan.rounds = args.rounds
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"tokenizer", "train", "amp", "inference", "data"}
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or cores
    torch.set_num_threads(threads)
    registered = registered_methods()
    methods = registered if args.methods is None else [m.strip() for m in args.methods.split(",")]
    if plan.methods is not None and args.methods is None:
        methods = [m for m in plan.methods if m in registered]
    missing = [m for m in methods if m not in registered]
    if missing:
        ap.error(f"method(s) {missing} not registered; registered: {registered}")
    if "full" not in methods and sections & {"train"}:
        methods = ["full", *methods]
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        ap.error("--device cuda given but CUDA is not available")

    t_start = time.perf_counter()
    res: dict[str, Any] = {"mode": plan.name, "meta": machine_info(), "registered_methods": registered,
                           "methods": methods, "sections": sorted(sections), "devices": {}}
    res["meta"]["torch_threads"] = threads
    res["meta"]["git_commit"] = _git_commit()
    for dev in devices:
        sec: dict[str, Any] = {}
        res["devices"][dev.type] = sec
        if "tokenizer" in sections:
            sec["tokenizer"] = bench_tokenizer(plan, dev)
        if "train" in sections:
            sec["train"] = bench_train(plan, methods, dev, threads)
        if "amp" in sections:
            sec["amp"] = bench_amp(plan, methods, dev)
        if "inference" in sections:
            sec["inference"] = bench_inference(plan, methods, dev)
    if "data" in sections:
        res["data"] = bench_data(plan, res["devices"].get("cpu", {}).get("train"))
    res["loadavg_end"] = load_average()
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["targets"] = targets(res)
    text = render(res)
    print(text)
    suffix = "" if plan.name == "quick" else f"-{plan.name}"
    out = args.out or str(ROOT / "benchmarks" / f"results-{platform.node() or 'host'}{suffix}.json")
    if out != "-":
        from pointpeft.utils.io import atomic_write_json

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)
        log(f"wrote {out} ({res['wall_s']} s)")
    if args.markdown:
        from pointpeft.utils.io import atomic_write_text

        atomic_write_text(args.markdown, text)
    return 0


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=str(ROOT), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
