"""The pretraining's linear probe: the torch solver reaches scikit-learn's solutions, and the probe schedule follows
the epoch number, so a resumed pretraining probes (and logs) exactly where the uninterrupted one did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pointpeft.config import load_config
from pointpeft.engine.mae_task import MAEPretrainTask
from pointpeft.engine.probe import linear_probe_accuracy, probe_due
from pointpeft.engine.trainer import build_task
from pointpeft.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "cfgs" / "pretrain" / "synthetic_small.yaml"


def _blobs(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 1.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * spread
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim)) * rng.uniform(0.5, 3.0, size=dim)  # uneven feature scales
    return x.astype(np.float32), y + 3  # labels need not start at 0


@pytest.mark.parametrize("method", ["svm", "logreg"])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_torch_solver_matches_sklearn(method: str, C: float) -> None:
    torch.set_num_threads(1)
    tx, ty = _blobs(60, 8, 24, seed=0)
    vx, vy = _blobs(40, 8, 24, seed=0)[0] + np.float32(0.3), _blobs(40, 8, 24, seed=0)[1]
    ours = linear_probe_accuracy(tx, ty, vx, vy, method, C, solver="torch")
    ref = linear_probe_accuracy(tx, ty, vx, vy, method, C, solver="sklearn", max_iter=20000)
    assert 20.0 < ref < 99.0, ref  # neither trivial nor hopeless, so a different optimum would show
    assert abs(ours - ref) <= 100.0 / len(vy) + 1e-9, (ours, ref)  # at most one test sample apart


def test_probe_errors_name_the_option() -> None:
    x, y = _blobs(5, 2, 4, seed=1)
    with pytest.raises(ConfigError, match="solver"):
        linear_probe_accuracy(x, y, x, y, "svm", 1.0, solver="liblinear")
    with pytest.raises(ConfigError, match="class"):
        linear_probe_accuracy(x, np.zeros_like(y), x, y, "svm", 1.0)


def test_probe_schedule_follows_the_epoch_number() -> None:
    due = [e for e in range(1, 31) if probe_due(e, 25, 30, evaluations=0)]
    assert due == [25, 30]
    # resumed after epoch 7 (its first evaluation is epoch 8): no probe until epoch 25, as uninterrupted
    assert not probe_due(8, 25, 30, evaluations=1)
    assert [n for n in range(1, 5) if probe_due(None, 2, None, evaluations=n)] == [1, 3]  # outside the trainer


def test_resumed_pretraining_probes_where_the_uninterrupted_run_did(monkeypatch) -> None:
    """The task's own ``evaluate`` with the Chamfer pass and the probe stubbed: a run resumed after epoch 2 (a new
    task, as after a restart) probes at epochs 4 and 5 like the uninterrupted run, not at its first evaluation."""
    monkeypatch.setattr(MAEPretrainTask, "chamfer_eval", lambda self, model, loader: {"cd_l2": 1.0, "loss": 1.0})
    monkeypatch.setattr(MAEPretrainTask, "probe_eval", lambda self, model, loader: {"probe_acc": 50.0})
    cfg = load_config(SYNTH, ["train.epochs=5", "pretrain.probe.every=2"])

    def probed(epochs: range) -> list[int]:
        task = build_task(cfg)
        out = []
        for epoch in epochs:
            task.epoch = epoch
            if "probe_acc" in task.evaluate(torch.nn.Linear(1, 1), None):
                out.append(epoch)
        return out

    assert probed(range(1, 6)) == [2, 4, 5]
    assert probed(range(3, 6)) == [4, 5]
