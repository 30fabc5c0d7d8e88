"""Speed and memory benchmarks of pointpeft on this machine (issues 10, 19).

    python tools/benchmark.py --quick      # < 5 min on 2 cores: small model, N=1024, fewer repetitions (make bench)
    python tools/benchmark.py --full       # the whole grid: both model sizes, N in {1024, 2048, 8192}, all methods
    python tools/benchmark.py --smoke      # seconds: tiny model, one repetition (used by the test suite)

Sections (``--sections``): ``tokenizer`` (FPS per backend, kNN, grouping), ``train`` (one optimisation step, full
fine-tuning vs every registered PEFT method: samples/s, peak memory, saved activations, profiler check that no
backward runs through the frozen encoder), ``amp`` (fp32 vs bf16 autocast vs auto), ``inference`` (backbone vs
Adapter-X vs merged LoRA/MoSA, batch 32 and 1), ``smoa`` (where Adapter-X's block time goes: router, dispatch,
experts, prompt), ``data`` (data set readers with 0 and 2 workers), ``probe`` (the pretraining linear probe's
solvers on pooled features).

Method: warm-up runs, then repetitions; medians with spread (quartiles, min/max). Candidates compared with each
other are timed interleaved (round-robin), and ratios are medians of per-round ratios, so load on a shared machine
hits both sides. Peak memory of each training configuration is measured in a fresh subprocess: its peak RSS
(``VmHWM``, reset after loading the libraries; ``getrusage`` keeps the parent's size across exec) minus its RSS before
the model was built (CUDA: ``torch.cuda.max_memory_allocated``). Writes
``benchmarks/results/results-<cpu kind>-<hostname>[-mode].json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.plans import PLANS, Plan
from benchmarks.report import log, render, targets
from pointpeft.utils.machine import load_average, machine_info

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Context:
    """What a section gets: the plan, the methods, the device and threads, and the sections measured so far."""

    plan: Plan
    methods: list[str]
    device: torch.device
    threads: int
    done: dict[str, Any] = field(default_factory=dict)


def _tokenizer(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.tokenizer import bench_tokenizer

    return bench_tokenizer(ctx.plan, ctx.device)


def _train(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.train import bench_train

    return bench_train(ctx.plan, ctx.methods, ctx.device, ctx.threads)


def _amp(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.amp import bench_amp

    return bench_amp(ctx.plan, ctx.methods, ctx.device)


def _inference(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.inference import bench_inference

    return bench_inference(ctx.plan, ctx.methods, ctx.device)


def _smoa(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.smoa import bench_smoa

    return bench_smoa(ctx.plan, ctx.device)


def _data(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.data import bench_data

    return bench_data(ctx.plan, ctx.done.get("train"))


def _probe(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections.probe import bench_probe

    return bench_probe(ctx.plan, ctx.done.get("train"))


#: section name -> (runner, runs once per device). Per-device sections land under ``devices.<type>``, the others at
#: the top of the JSON (they time CPU-side work).
SECTIONS: dict[str, tuple[Callable[[Context], dict[str, Any]], bool]] = {
    "tokenizer": (_tokenizer, True), "train": (_train, True), "amp": (_amp, True),
    "inference": (_inference, True), "smoa": (_smoa, True), "data": (_data, False), "probe": (_probe, False),
}
DEFAULT_SECTIONS = "tokenizer,train,amp,inference,data"


def registered_methods() -> list[str]:
    import pointpeft.peft  # noqa: F401  (registers the methods)
    from pointpeft.registry import PEFT_METHODS

    return list(PEFT_METHODS.keys())


def default_out(meta: dict[str, Any], mode: str) -> Path:
    suffix = "" if mode == "quick" else f"-{mode}"
    return RESULTS_DIR / f"results-{meta['cpu_kind']}-{meta['host'] or 'host'}{suffix}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="the default")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke")
    ap.add_argument("--sections", default=DEFAULT_SECTIONS,
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default {DEFAULT_SECTIONS})")
    ap.add_argument("--models", help="comma-separated point transformers (overrides the mode's)")
    ap.add_argument("--methods", help="comma-separated PEFT methods (default: every registered one)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of training steps")
    ap.add_argument("--isolated-steps", type=int,
                    help="training steps timed in each configuration's fresh process (one model per process, as in a "
                         "training run), after a warm-up step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="all = cpu (+ cuda if present)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/results-<cpu kind>-<hostname>.json, "
                                  "-full/-smoke added for those modes; '-' for none)")
    ap.add_argument("--markdown", help="also write the markdown tables to this file")
    args = ap.parse_args(argv)
    plan = copy.deepcopy(PLANS[args.mode or "quick"])
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        plan = replace(plan, models=models, amp_models=models, infer_models=models)
    if args.rounds:
        plan.rounds = args.rounds
    if args.isolated_steps:
        plan.mem_steps = args.isolated_steps
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    sections = [s for s in SECTIONS if s in sections]  # fixed order: data and probe read the train section
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
    if "full" not in methods and "train" in sections:
        methods = ["full", *methods]
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        ap.error("--device cuda given but CUDA is not available")

    t_start = time.perf_counter()
    res: dict[str, Any] = {"mode": plan.name, "meta": machine_info(), "registered_methods": registered,
                           "methods": methods, "sections": sections, "devices": {}}
    res["meta"]["torch_threads"] = threads
    res["meta"]["git_commit"] = _git_commit()
    cpu_ctx: Context | None = None
    for dev in devices:
        ctx = Context(plan, methods, dev, threads)
        cpu_ctx = ctx if dev.type == "cpu" else cpu_ctx
        res["devices"][dev.type] = ctx.done
        for name in sections:
            runner, per_device = SECTIONS[name]
            if per_device:
                ctx.done[name] = runner(ctx)
    shared = cpu_ctx or Context(plan, methods, devices[0], threads)
    for name in sections:
        runner, per_device = SECTIONS[name]
        if not per_device:
            res[name] = runner(shared)
    res["loadavg_end"] = load_average()
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["targets"] = targets(res)
    text = render(res)
    print(text)
    out = Path(args.out) if args.out else default_out(res["meta"], plan.name)
    if str(out) != "-":
        from pointpeft.utils.io import atomic_write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)
        log(f"wrote {out} ({res['wall_s']} s)")
    if args.markdown:
        from pointpeft.utils.io import atomic_write_text

        atomic_write_text(args.markdown, text)
    return 0


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=str(RESULTS_DIR.parent), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
