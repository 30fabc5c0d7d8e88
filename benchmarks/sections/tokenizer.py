"""Tokenizer section: FPS per backend (exact or not), kNN and the whole grouping."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.plans import Plan
from benchmarks.report import log
from benchmarks.timing import time_fn, time_interleaved


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
