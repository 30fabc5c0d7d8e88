"""Probe section: the pretraining's linear probe (``pretrain.probe``) against a pretraining epoch (issue 19).

With the shared small backbone (``point_mae_small_mn40.pth``) and the real ModelNet40 present: pooled features of
every training and test cloud (the probe's feature pass, timed), then the linear SVM fit with the torch solver and,
in ``--full`` mode, with scikit-learn's ``LinearSVC`` (accuracy and time of both), and a pretraining step of the
same model at the recipe's batch 64 (timed) x steps per epoch for the share. Without them (and in ``--smoke``):
the solvers on synthetic features of the same shape.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.plans import MODELNET_H5, Plan
from benchmarks.report import log

WEIGHTS = Path("/work/shared/weights/point_mae_small_mn40.pth")
ARCH = {"arch": "point_mae_small", "decoder_depth": 2}  # how the shared weights were pretrained (their README)
PRETRAIN_BATCH = 64
SVM_C = 0.01  # the shared weights' README: 85.8% with LinearSVC at C = 0.01


def _model() -> torch.nn.Module:
    from pointpeft.models.mae import build_point_mae_pretrain

    model = build_point_mae_pretrain(**ARCH)
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["base_model"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model


def _real_features(plan: Plan) -> dict[str, Any]:
    from pointpeft.data import build_dataloader, build_dataset
    from pointpeft.engine.mae_task import extract_features

    model = _model()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for split in ("train", "test"):
        ds = build_dataset({"type": "modelnet40", "root": str(MODELNET_H5), "split": split, "npoints": plan.npoints})
        if plan.probe_clouds:
            ds = torch.utils.data.Subset(ds, range(min(plan.probe_clouds, len(ds))))
        out[split] = extract_features(model, build_dataloader(ds, 128, shuffle=False))
    out["features_s"] = round(time.perf_counter() - t0, 1)
    out["model"] = model
    return out


def _epoch_s(model: torch.nn.Module, npoints: int, n_train: int, steps: int = 3) -> dict[str, float]:
    """Seconds of one pretraining epoch of ``model`` on ``n_train`` clouds: median step x steps per epoch."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.rand(PRETRAIN_BATCH, npoints, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step = float(np.median(times[1:]))
    per_epoch = -(-n_train // PRETRAIN_BATCH)
    return {"step_s": round(step, 3), "steps_per_epoch": per_epoch, "epoch_s": round(step * per_epoch, 1)}


def _synthetic(n_train: int, n_test: int, dim: int, classes: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim))
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        return (centres[y] + rng.normal(size=(n, dim)) * 2.0).astype(np.float32), y
    return {"train": draw(n_train), "test": draw(n_test)}


def bench_probe(plan: Plan, train: dict[str, Any] | None = None) -> dict[str, Any]:
    from pointpeft.engine.probe import linear_probe_accuracy

    real = WEIGHTS.is_file() and MODELNET_H5.is_dir() and plan.name != "smoke"
    log(f"probe: {'real ModelNet40 features of ' + str(WEIGHTS) if real else 'synthetic features'}")
    feats = _real_features(plan) if real else _synthetic(*plan.probe_synthetic)
    (tx, ty), (vx, vy) = feats["train"], feats["test"]
    res: dict[str, Any] = {"features": "modelnet40 + shared small backbone" if real else "synthetic",
                           "train_shape": list(tx.shape), "test_shape": list(vx.shape), "C": SVM_C,
                           "threads": torch.get_num_threads(), "solvers": {}}
    if real:
        res["features_s"] = feats["features_s"]
    solvers = ["torch"] + (["sklearn"] if plan.probe_sklearn else [])
    for solver in solvers:
        t0 = time.perf_counter()
        acc = linear_probe_accuracy(tx, ty, vx, vy, "svm", SVM_C, solver=solver)
        res["solvers"][solver] = {"accuracy": round(acc, 2), "fit_s": round(time.perf_counter() - t0, 2)}
        log(f"probe: svm ({solver}) {acc:.2f}% in {res['solvers'][solver]['fit_s']} s")
    if real:
        res["pretrain_epoch"] = _epoch_s(feats["model"], plan.npoints, len(ty))
        probe_s = res["features_s"] + res["solvers"]["torch"]["fit_s"]
        res["probe_s"] = round(probe_s, 1)
        res["probe_share_of_epoch"] = round(probe_s / res["pretrain_epoch"]["epoch_s"], 3)
    return res
