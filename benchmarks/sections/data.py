"""Data section: samples/s of the data set readers with 0 and 2 workers, against the training step's."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.plans import MODELNET_H5, Plan
from benchmarks.report import log
from benchmarks.timing import Stats


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
