"""What each mode measures (``--smoke`` / ``--quick`` / ``--full``): model sizes, grids, repetitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: the real ModelNet40 HDF5 set of the data section
MODELNET_H5 = Path("/work/shared/data/modelnet40_ply_hdf5_1024")


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
    probe_clouds: int | None = None  # clouds per split for the probe's real features (None: all)
    probe_sklearn: bool = False  # also fit scikit-learn's LinearSVC (8 minutes on one core for ModelNet40)
    probe_synthetic: tuple[int, int, int, int] = (9843, 2468, 384, 40)  # n_train, n_test, dim, classes


PLANS: dict[str, Plan] = {
    "smoke": Plan("smoke", models=["point_mae_tiny"], batch=4, npoints=256, token_grid=[(256, 16, 8)], token_reps=2,
                  kdline_scan=False, methods=["full", "adapterx"], rounds=2, amp_models=["point_mae_tiny"], live_memory=False, phase_steps=1,
                  amp_methods=["adapterx"], infer_models=["point_mae_tiny"], infer_batches=[4, 1],
                  infer_reps={4: 2, 1: 2}, data_batches=2, data_sets=["synthetic_shapes"], synthetic_samples=48,
                  probe_synthetic=(200, 80, 16, 4)),
    "quick": Plan("quick", models=["point_mae_small"], token_grid=[(1024, 64, 32)], rounds=4,
                  amp_models=["point_mae_small"], infer_models=["point_mae_small"], data_batches=15,
                  profile_methods=["full", "adapterx", "linear"]),
    "full": Plan("full", models=["point_mae_small", "point_mae"],
                 token_grid=[(1024, 64, 32), (2048, 128, 32), (8192, 512, 32)], token_reps=7, rounds=6, mem_steps=2,
                 amp_models=["point_mae_small", "point_mae"], infer_models=["point_mae_small", "point_mae"],
                 infer_reps={32: 9, 1: 31}, data_batches=30, probe_sklearn=True),
}
