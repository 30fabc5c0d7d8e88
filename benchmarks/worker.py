"""The training section's fresh-process worker: peak memory, isolated steps, phases and a profile of one
configuration (``python -m benchmarks.worker CONFIG_JSON``), and how the parent starts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import torch

from benchmarks.memory import MIB, current_rss_bytes, peak_rss_bytes, reset_peak_rss
from benchmarks.profiling import encoder_backward_check, top_ops
from benchmarks.step import TrainStep
from benchmarks.timing import Timer

RESULT_TAG = "@@BENCH_RESULT "


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
    """Run the configuration ``arg`` (JSON) and print its result after :data:`RESULT_TAG` for the parent."""
    cfg = json.loads(arg)
    try:
        res = run_train_worker(cfg)
    except Exception as e:  # reported to the parent, which records it and carries on
        res = {"error": f"{type(e).__name__}: {e}"}
    print(RESULT_TAG + json.dumps(res), flush=True)


def spawn_worker(cfg: dict[str, Any], timeout: float = 900.0, extra_env: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter (``python -m benchmarks.worker``); its result or an error."""
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(cfg)]
    env = {**os.environ, **(extra_env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}


if __name__ == "__main__":
    worker_main(sys.argv[1])
