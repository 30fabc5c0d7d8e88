"""What a run reports: the targets it checks, the markdown tables, the progress log."""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.timing import paired_ratio
from pointpeft.utils.machine import load_average


def _median(ratio: Any) -> Any:
    """A paired ratio's median: results written before the smoa rows carried quartiles hold the bare number."""
    return ratio["median"] if isinstance(ratio, dict) else ratio


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_average()}] {msg}", file=sys.stderr, flush=True)


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
                    add(f"train {c['model']} {dev}: Adapter-X speed-up vs full", v["speedup"], ">= 1.95",
                        v["speedup"] >= 1.95, f"per-round range {v['speedup_min']}-{v['speedup_max']}")
                    if "isolated_speedup" in v:
                        add(f"train {c['model']} {dev}: Adapter-X speed-up vs full, one model per fresh process",
                            v["isolated_speedup"], ">= 1.95", v["isolated_speedup"] >= 1.95,
                            f"medians of {v['isolated_steps']} steps each, processes run one after another")
                    lora = next((q for q in tr["results"] if q["config"]["model"] == c["model"]
                                 and q["config"]["method"] == "lora"), None)
                    if lora and "phases_interleaved_ms" in lora and "phases_interleaved_ms" in r:
                        pr = paired_ratio(r["phases_interleaved_ms"]["blocks_forward"],
                                          lora["phases_interleaved_ms"]["blocks_forward"])
                        add(f"train {c['model']} {dev}: Adapter-X blocks forward / LoRA's, interleaved",
                            round(pr.median, 3), "<= 1.10", pr.median <= 1.10,
                            f"median of {pr.n} per-round ratios, range {pr.min:.3f}-{pr.max:.3f}")
                    if lora and "phases_ms" in r and lora.get("phases_ms", {}).get("blocks_forward"):
                        v2 = round(r["phases_ms"]["blocks_forward"] / lora["phases_ms"]["blocks_forward"], 3)
                        add(f"train {c['model']} {dev}: Adapter-X blocks forward / LoRA's", v2, "<= 1.10", v2 <= 1.10,
                            "isolated steps in the memory worker (not interleaved)")
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
                    goal = 1.10 if r["batch"] == 1 else 1.09
                    add(f"inference {r['model']} batch {r['batch']} {dev}: Adapter-X / backbone", v, f"<= {goal}",
                        v <= goal)
                elif r["variant"].endswith("(merged)"):
                    add(f"inference {r['model']} batch {r['batch']} {dev}: {r['variant']} / backbone", v,
                        "1.00 (within 5% noise)", abs(v - 1) <= 0.05)
    probe = res.get("probe")
    if probe and "probe_share_of_epoch" in probe:
        add("pretrain probe (features + torch SVM fit) / pretraining epoch", probe["probe_share_of_epoch"], "<= 0.25",
            probe["probe_share_of_epoch"] <= 0.25, f"{probe['probe_s']} s vs {probe['pretrain_epoch']['epoch_s']} s")
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
    for dev, sec in res["devices"].items():
        if "smoa" in sec:
            sm = sec["smoa"]
            rows = [[r["model"], r["batch"], r["variant"], fmt_ms(r["ms"], 2), _median(r.get("vs_backbone", 1)),
                     r["calls"]["ops"] if "calls" in r else "", r["calls"]["ops_ms"] if "calls" in r else ""]
                    for r in sm["inference"]]
            parts.append(f"### Adapter-X inference variants, {dev}, fp32\n" +
                         md_table(["model", "batch", "variant", "ms", "vs backbone", "operator calls (smallest batch)",
                                   "their profiled ms"], rows))
            names = list(sm["parts"][0]["ms"]) if sm["parts"] else []
            rows = [[p["model"], p["batch"], p["sub_tokens"], p["busiest_over_mean_expert"]] +
                    [p["ms"][k] for k in names] for p in sm["parts"]]
            parts.append(f"### SMoA parts of block 0, {dev} (ms, median)\n" +
                         md_table(["model", "batch", "sub-tokens", "busiest/mean expert", *names], rows))
    if "probe" in res:
        pr = res["probe"]
        rows = [[k, v["accuracy"], v["fit_s"]] for k, v in pr["solvers"].items()]
        extra = (f"; features {pr['features_s']} s; pretraining epoch {pr['pretrain_epoch']['epoch_s']} s "
                 f"({pr['pretrain_epoch']['steps_per_epoch']} steps of {pr['pretrain_epoch']['step_s']} s); probe = "
                 f"{pr['probe_share_of_epoch']} of an epoch" if "probe_s" in pr else "")
        parts.append(f"### Pretraining probe (linear SVM, C={pr['C']}, {pr['features']}, train {pr['train_shape']}, "
                     f"{pr['threads']} threads{extra})\n" + md_table(["solver", "accuracy %", "fit s"], rows))
    if res.get("targets"):
        rows = [[t["target"], t["value"], t["goal"], {True: "met", False: "MISSED", None: "-"}[t["met"]], t["note"]]
                for t in res["targets"]]
        parts.append("### Targets\n" + md_table(["target", "value", "goal", "status", "note"], rows))
    return "\n\n".join(parts) + "\n"
