"""Time the FPS backends (and kNN / Chamfer) on CPU: ``python benchmarks/bench_ops.py [--threads 2]``.

Prints one table: best of ``--repeat`` runs in ms, and whether each backend returned the reference indices.
The reference point for issue 10 is fpsample's fastest mode (QuickFPS ``bucket_fps_kdline``, best tree height).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pointpeft.ops import available_fps_backends, chamfer_l2, farthest_point_sample, knn_query


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"threads={args.threads} B={args.batch} cpu capability={torch.backends.cpu.get_cpu_capability()}")
    print(f"{'case':<22}{'backend':<26}{'ms':>9}  exact")
    for n, s in ((1024, 64), (8192, 512)):
        xyz = torch.rand(args.batch, n, 3, generator=gen) * 2 - 1
        ref = farthest_point_sample(xyz, s, backend="torch")
        case = f"FPS {n}->{s}"
        for be in available_fps_backends("cpu"):
            ms = best_ms(lambda be=be, xyz=xyz, s=s: farthest_point_sample(xyz, s, backend=be), args.repeat)
            same = bool(torch.equal(farthest_point_sample(xyz, s, backend=be), ref))
            print(f"{case:<22}{be:<26}{ms:9.1f}  {same}")
        try:
            import fpsample
        except ImportError:
            continue
        pts = xyz.numpy()
        for h in range(2, 9):
            if 2**h > n:
                break
            ms = best_ms(lambda h=h, s=s, pts=pts: np.stack(
                [fpsample.bucket_fps_kdline_sampling(p, s, h, start_idx=0) for p in pts]), args.repeat)
            print(f"{case:<22}{f'fpsample kdline h={h}':<26}{ms:9.1f}  -")
    xyz = torch.rand(args.batch, 1024, 3, generator=gen)
    centres = xyz[:, :64]
    print(f"{'kNN 1024, 64x32':<22}{'torch':<26}{best_ms(lambda: knn_query(32, xyz, centres), args.repeat):9.1f}")
    a = torch.rand(args.batch * 38, 32, 3, generator=gen)
    b = torch.rand(args.batch * 38, 32, 3, generator=gen)
    print(f"{'Chamfer 1216x32x32':<22}{'torch':<26}{best_ms(lambda: chamfer_l2(a, b), args.repeat):9.1f}")


if __name__ == "__main__":
    main()
