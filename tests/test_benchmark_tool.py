"""tools/benchmark.py --smoke runs end to end and writes a complete JSON; the timing helpers' statistics (benchmarks package)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.timing import Stats, paired_ratio, time_fn, time_interleaved
from pointpeft.utils.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]


def test_stats_match_numpy_quantiles():
    vals = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    s = Stats.of(vals)
    assert s.median == pytest.approx(np.median(vals))
    assert s.q1 == pytest.approx(np.quantile(vals, 0.25)) and s.q3 == pytest.approx(np.quantile(vals, 0.75))
    assert (s.min, s.max, s.n) == (1.0, 10.0, 6)
    assert s.scaled(1000).median == pytest.approx(3500.0)
    assert s.inverse(2.0).max == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Stats.of([])


def test_paired_ratio_is_per_round():
    # a load spike in round 2 slows both sides; per-round ratios stay 2.0
    r = paired_ratio([2.0, 20.0, 2.2], [1.0, 10.0, 1.1])
    assert r.median == pytest.approx(2.0) and r.max == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_time_helpers_call_counts():
    calls = {"a": 0, "b": 0}

    def make(k):
        def fn():
            calls[k] += 1
        return fn

    stats = time_interleaved({"a": make("a"), "b": make("b")}, warmup=2, reps=3)
    assert calls == {"a": 5, "b": 5} and stats["a"].n == 3
    st = time_fn(make("a"), warmup=1, reps=4)
    assert st.n == 4 and st.min >= 0


def test_machine_info_fields():
    info = machine_info()
    for key in ("cpu_model", "cpu_count", "torch", "cpu_capability", "bf16_native", "bf16_native_flags", "date",
                "loadavg"):
        assert key in info
    assert isinstance(info["bf16_native"], bool)


@pytest.mark.timeout(120)
def test_smoke_run_writes_complete_json(tmp_path):
    out = tmp_path / "results.json"
    md = tmp_path / "tables.md"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--smoke", "--threads", "1",
                           "--out", str(out), "--markdown", str(md)], capture_output=True, text=True, cwd=ROOT,
                          timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke" and res["meta"]["torch_threads"] == 1
    cpu = res["devices"]["cpu"]
    # tokenizer: every available backend timed; exact backends return the reference indices
    fps = [r for r in cpu["tokenizer"]["rows"] if r["op"] == "fps"]
    assert {"torch"} <= {r["backend"] for r in fps} and sum(r["default"] for r in fps) == 1
    assert all(r["exact"] for r in fps if r["ref_exact_backend"])
    assert {r["op"] for r in cpu["tokenizer"]["rows"]} == {"fps", "knn", "group"}
    # training: full vs adapterx, timed, memory from a fresh process, profiler check of the encoder backward
    rows = {r["config"]["method"]: r for r in cpu["train"]["results"]}
    assert set(rows) == {"full", "adapterx"}
    for r in rows.values():
        assert "error" not in r, r.get("error")
        assert r["step_s"]["n"] == 2 and r["step_s"]["median"] > 0 and r["peak_mem_mb"] > r["peak_delta_mb"] > 0
        assert set(r["phases_ms"]) >= {"tokenizer", "blocks_forward", "backward", "optimizer"}
        # the interleaved phases: one value per round for every phase, for paired ratios between configs
        assert all(len(v) == 2 and min(v) >= 0 for v in r["phases_interleaved_ms"].values())
        assert r["isolated_step_s"]["n"] >= 1
    assert rows["full"]["encoder_backward_nodes"], "full fine-tuning must backpropagate through the encoder"
    assert rows["adapterx"]["encoder_backward_nodes"] == []
    assert rows["adapterx"]["trainable"] < rows["full"]["trainable"]
    assert rows["adapterx"]["saved_activations_mb"] < rows["full"]["saved_activations_mb"]
    assert {"speedup", "mem_ratio"} <= set(rows["adapterx"]["vs_full"])
    # mixed precision: the three precisions, auto resolved to a dtype with a reason
    precs = {r["config"]["precision"]: r for r in cpu["amp"]["train"]}
    assert set(precs) == {"fp32", "bf16", "auto"} and precs["bf16"]["amp_dtype"] == "bfloat16"
    assert precs["auto"]["amp_dtype"] == cpu["amp"]["auto_dtype"] and cpu["amp"]["auto_reason"]
    # inference: backbone and Adapter-X at both batch sizes, with ratios
    inf = cpu["inference"]["rows"]
    assert {(r["variant"], r["batch"]) for r in inf} >= {("backbone", 4), ("backbone", 1), ("adapterx", 4),
                                                         ("adapterx", 1)}
    assert all("vs_backbone" in r for r in inf if r["variant"] != "backbone")
    # data loading with 0 and 2 workers
    assert {r["workers"] for r in res["data"]["rows"]} == {0, 2}
    assert all(r["samples_per_s"] > 0 for r in res["data"]["rows"])
    # targets are listed but not judged on tiny smoke sizes
    assert res["targets"] and all(t["met"] is None for t in res["targets"])
    assert "### Targets" in proc.stdout and md.read_text().strip() == proc.stdout.strip()
