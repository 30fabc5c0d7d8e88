"""The ``mae_pretrain`` task: Point-MAE masked-autoencoder pretraining on the shared trainer.

* training step: the model's reconstruction loss (Chamfer-L2 of the hidden patches, Point-MAE's ``cdl2``);
* evaluation: the mean Chamfer-L2 on a held-out split with masks drawn from a fixed seed, so epochs compare
  (lower is better), and optionally a linear probe (linear SVM as in Point-MAE / Point-BERT, or logistic
  regression; scikit-learn) on pooled encoder features of labelled data, e.g. ModelNet40;
* at the end: ``pretrain.pth`` in the official layout (``{"base_model": ..., "epoch": ...}``, see
  :func:`pointpeft.models.mae.export_pretrain_checkpoint`) in the run folder, plus ``pretrain-best.pth`` from the
  evaluation with the lowest Chamfer distance when that one is better than the final weights.

Options live in the config's ``pretrain:`` section (:class:`PretrainOptions`; unknown keys are errors).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pointpeft.config import Config, build_dataclass
from pointpeft.engine.probe import PROBE_SOLVERS, linear_probe_accuracy, probe_due
from pointpeft.errors import ConfigError
from pointpeft.models.mae import PointMAE, export_pretrain_checkpoint
from pointpeft.ops.chamfer import chamfer_l2
from pointpeft.registry import MODELS, TASKS
from pointpeft.utils.misc import get_logger
from pointpeft.utils.modules import device_of, unwrap

log = get_logger("engine.mae")

PROBE_METHODS = ("svm", "logreg", "none")


@dataclass
class ProbeOptions:
    """Linear probe on frozen pooled encoder features (concat of max and mean over the patch tokens)."""

    method: str = "svm"  # svm: linear SVM, LinearSVC's objective (Point-MAE/Point-BERT's SVM) | logreg | none
    solver: str = "torch"  # torch: L-BFGS on all threads, seconds (pointpeft.engine.probe) | sklearn: LinearSVC etc.
    C: float = 1.0  # inverse regularisation strength of the SVM / logistic regression
    standardize: bool = True  # z-score the features (fit on the probe's train split) before the linear model
    max_iter: int = 5000
    every: int = 1  # probe after every n-th epoch and the last (the feature pass is a forward over both splits)
    train: dict | None = None  # data set node of the probe's train split; default: data.train without transforms
    test: dict | None = None  # data set node of the probe's test split; default: the evaluation data set
    batch_size: int | None = None  # feature-extraction batch size; default: data.batch_size

    def __post_init__(self) -> None:
        if self.method not in PROBE_METHODS:
            raise ValueError(f"probe.method must be one of {list(PROBE_METHODS)}, got {self.method!r}")
        if not self.C > 0:
            raise ValueError(f"probe.C must be > 0, got {self.C}")
        if self.every < 1:
            raise ValueError(f"probe.every must be >= 1, got {self.every}")
        if self.solver not in PROBE_SOLVERS:
            raise ValueError(f"probe.solver must be one of {list(PROBE_SOLVERS)}, got {self.solver!r}")


@dataclass
class PretrainOptions:
    """The ``pretrain:`` section."""

    eval_seed: int = 0  # seed of the held-out masks: every evaluation hides the same patches
    probe: dict | None = None  # ProbeOptions keys; absent or null = no probe
    export: bool = True  # write pretrain.pth (and pretrain-best.pth) into the run folder at the end
    export_name: str = "pretrain.pth"
    best_name: str = "pretrain-best.pth"
    probe_options: ProbeOptions | None = field(default=None, init=False, repr=False)


# ---------------------------------------------------------------------------------------------------------------
# linear probe
# ---------------------------------------------------------------------------------------------------------------
def _points(batch: Any) -> torch.Tensor:
    pts = batch[0] if isinstance(batch, (tuple, list)) else batch
    return pts[..., :3]  # drop normals / colours: the MAE sees xyz only


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 2C) float32, labels (n,)) of every cloud in ``loader``, model in eval mode, no masking."""
    core = unwrap(model)
    dev = device_of(core)
    was_training = core.training
    core.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            feats.append(core.extract_features(_points(batch).to(dev).float()).float().cpu())
            labels.append(torch.as_tensor(batch[1]).reshape(-1).cpu())
    finally:
        core.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


# ---------------------------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------------------------
@TASKS.register("mae_pretrain")
class MAEPretrainTask:
    """Point-MAE pretraining: loss = masked-patch reconstruction; metric = held-out Chamfer-L2 (lower is better)."""

    main_metric = "cd_l2"
    higher_is_better = False

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, Config) else Config(dict(cfg or {}))
        self.options = build_dataclass(PretrainOptions, self.cfg.get("pretrain"), "pretrain", self.cfg)
        node = self.options.probe
        if node is not None and not isinstance(node, Mapping):
            raise ConfigError(f"{self.cfg.source_of('pretrain.probe')}: pretrain.probe must be a mapping or null")
        probe = build_dataclass(ProbeOptions, node, "pretrain.probe", self.cfg) if node is not None else None
        self.probe = probe if probe is not None and probe.method != "none" else None
        self._probe_loaders: tuple[DataLoader, DataLoader] | None = None
        self._num_evals = 0
        self.best_metric: float = math.inf
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self.last_metric: float | None = None
        self.epoch: int | None = None  # set by the trainer's hooks when it tells the task (see on_epoch_start)

    # -- model ---------------------------------------------------------------------------------------------
    def build_model(self, cfg: Mapping[str, Any] | None = None, ckpt: str | None = None) -> nn.Module:
        """The ``model:`` node must build a :class:`PointMAE` (``type: point_mae_pretrain``); pretraining starts from
        scratch (``ckpt`` is refused: continue a run with ``--resume``)."""
        cfg = self.cfg if cfg is None else cfg
        if ckpt:
            raise ConfigError(f"mae_pretrain starts from random weights; --ckpt {ckpt} is not used (continue an "
                              "interrupted pretraining with --resume)")
        node = cfg.get("model") if isinstance(cfg, Mapping) else None
        if not isinstance(node, Mapping) or not (node.get("type") or node.get("NAME")):
            raise ConfigError("mae_pretrain: the config needs a model section with type: point_mae_pretrain")
        try:
            model = MODELS.build(node)
        except ConfigError as e:
            where = cfg.source_of("model") if isinstance(cfg, Config) else "<config>"
            raise ConfigError(f"{where}: {e}") from None
        if not isinstance(model, PointMAE):
            raise ConfigError(f"mae_pretrain needs model.type: point_mae_pretrain, got {node.get('type')!r} "
                              f"({type(model).__name__})")
        return model

    # -- training ------------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        pts = _points(batch).to(device_of(model)).float()
        loss = model(pts)
        return loss, {"loss": float(loss.detach())}

    # -- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def chamfer_eval(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Mean Chamfer-L2 (and L1) of the hidden patches over ``loader``; masks from ``eval_seed`` + batch index."""
        core = unwrap(model)
        dev = device_of(core)
        was_training = core.training
        core.eval()
        total_l2 = total_loss = 0.0
        n = 0
        try:
            for i, batch in enumerate(loader):
                pts = _points(batch).to(dev).float()
                gen = torch.Generator(device=dev).manual_seed(int(self.options.eval_seed) * 100003 + i)
                loss, parts = core.loss_parts(pts, generator=gen)
                S = core.group_size
                rebuild, gt = parts["rebuild"].reshape(-1, S, 3), parts["gt"].reshape(-1, S, 3)
                b = pts.shape[0]
                total_l2 += float(chamfer_l2(rebuild, gt)) * b
                total_loss += float(loss) * b
                n += b
        finally:
            core.train(was_training)
        if n == 0:
            raise ConfigError("mae_pretrain: the evaluation data set is empty")
        return {"cd_l2": total_l2 / n, "loss": total_loss / n}

    def _build_probe_loaders(self, eval_loader: DataLoader) -> tuple[DataLoader, DataLoader]:
        from pointpeft.data import build_dataloader, build_dataset

        assert self.probe is not None
        data = self.cfg.get("data") or {}
        batch_size = int(self.probe.batch_size or data.get("batch_size") or eval_loader.batch_size or 32)
        train_node = self.probe.train
        if train_node is None:
            if not isinstance(data.get("train"), Mapping):
                raise ConfigError("pretrain.probe: no probe.train data set and no data.train to default to")
            train_node = {k: v for k, v in copy.deepcopy(dict(data["train"])).items() if k != "transforms"}
        train_ds = build_dataset(train_node, self.cfg if self.probe.train is None else None)
        test_ds = build_dataset(self.probe.test) if self.probe.test is not None else eval_loader.dataset
        return (build_dataloader(train_ds, batch_size, shuffle=False),
                build_dataloader(test_ds, batch_size, shuffle=False))

    def probe_eval(self, model: nn.Module, eval_loader: DataLoader) -> dict[str, float]:
        """``probe_acc``: linear-probe accuracy (%) on pooled encoder features."""
        assert self.probe is not None
        if self._probe_loaders is None:
            self._probe_loaders = self._build_probe_loaders(eval_loader)
        t0 = time.perf_counter()
        train_loader, test_loader = self._probe_loaders
        tx, ty = extract_features(model, train_loader)
        vx, vy = extract_features(model, test_loader)
        t_fit = time.perf_counter()
        acc = linear_probe_accuracy(tx, ty, vx, vy, self.probe.method, self.probe.C, self.probe.standardize,
                                    self.probe.max_iter, self.probe.solver)
        log.info("linear probe (%s, %s solver, C=%g) on %d train / %d test features: %.2f%% (features %.1f s, "
                 "fit %.1f s)", self.probe.method, self.probe.solver, self.probe.C, len(ty), len(vy), acc,
                 t_fit - t0, time.perf_counter() - t_fit)
        return {"probe_acc": acc}

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """``cd_l2`` (main metric, lower is better), ``loss`` and, when a probe is configured, ``probe_acc``."""
        metrics = self.chamfer_eval(model, loader)
        self._num_evals += 1
        if self.probe is not None and probe_due(self.epoch, self.probe.every, self._total_epochs(), self._num_evals):
            metrics.update(self.probe_eval(model, loader))
        self.last_metric = metrics["cd_l2"]
        if metrics["cd_l2"] < self.best_metric:
            self.best_metric = metrics["cd_l2"]
            self.best_epoch = self.epoch
            self._best_state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        return metrics

    def _total_epochs(self) -> int | None:
        epochs = (self.cfg.get("train") or {}).get("epochs")
        return int(epochs) if epochs is not None else None

    # -- export --------------------------------------------------------------------------------------------
    def export(self, model: nn.Module, run_dir: str | Path, epoch: int) -> list[Path]:
        """Write pretrain.pth (the final weights) and, when an evaluation saw a lower Chamfer distance than the
        final one, pretrain-best.pth (those weights). Returns the paths written."""
        if not self.options.export:
            return []
        core = unwrap(model)
        run_dir = Path(run_dir)
        metrics = {"cd_l2": self.last_metric} if self.last_metric is not None else {}
        written = [export_pretrain_checkpoint(core, run_dir / self.options.export_name, epoch=epoch,
                                              metrics=metrics)]
        if self._best_state is not None and self.last_metric is not None and self.best_metric < self.last_metric:
            final = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
            try:
                core.load_state_dict(self._best_state)
                best_epoch = self.best_epoch if self.best_epoch is not None else epoch
                written.append(export_pretrain_checkpoint(core, run_dir / self.options.best_name,
                                                          epoch=best_epoch, metrics={"cd_l2": self.best_metric}))
            finally:
                core.load_state_dict(final)
        for p in written:
            log.info("wrote %s", p)
        return written
