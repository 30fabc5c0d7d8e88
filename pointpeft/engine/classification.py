"""The ``classification`` task: cross-entropy plus the method's auxiliary losses; accuracy, mean-class accuracy and
the confusion matrix on evaluation (the numbers Point-MAE, DAPT and IDPT report)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pointpeft.config import Config
from pointpeft.errors import ConfigError
from pointpeft.models import describe_backbone, load_backbone_weights
from pointpeft.models.losses import cross_entropy
from pointpeft.peft import get_method, get_peft_model, training_forward
from pointpeft.registry import MODELS, TASKS
from pointpeft.utils.misc import get_logger
from pointpeft.utils.modules import device_of, unwrap

log = get_logger("engine.cls")


def build_classifier(cfg: Config, ckpt: str | None = None) -> nn.Module:
    """Backbone from ``model:``, pretrained weights from ``ckpt``, then the ``peft:`` method (default: full)."""
    node = cfg.get("model")
    if not isinstance(node, Mapping):
        raise ConfigError(f"{cfg.source_of('model')}: the config needs a model: section with a type")
    try:
        model = MODELS.build(node)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.source_of('model')}: model: {e}") from None
    if ckpt:
        report = load_backbone_weights(model, ckpt)
        log.info("pretrained weights: %s", report.summary())
    peft = cfg.get("peft") or {"type": "full"}
    try:
        return get_peft_model(model, dict(peft))
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.source_of('peft')}: peft: {e}") from None


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) counts."""
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """Overall accuracy and mean-class accuracy (classes present in ``target`` only), in percent."""
    cm = confusion_matrix(pred, target, num_classes)
    support = cm.sum(1)
    present = support > 0
    per_class = np.diag(cm)[present] / support[present]
    acc = 100.0 * float(np.trace(cm)) / max(int(cm.sum()), 1)
    return {"acc": acc, "mean_class_acc": 100.0 * float(per_class.mean()) if present.any() else 0.0}, cm


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, votes: Any = None, seed: int = 0,
            autocast: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions, targets, probabilities) over ``loader`` with the model in eval mode; ``votes`` is a
    :class:`~pointpeft.data.VoteAugmentation` (a fixed number of views averaged) or None for the plain test."""
    import contextlib

    core = unwrap(model)
    dev = device_of(core)
    was_training = core.training
    core.eval()
    gen = torch.Generator().manual_seed(seed)
    preds, targets, probs = [], [], []
    try:
        for pts, labels in loader:
            pts = pts.to(dev).float()
            with autocast() if autocast is not None else contextlib.nullcontext():
                p = votes.predict(core, pts, gen) if votes is not None else torch.softmax(core(pts).float(), -1)
            probs.append(p.float().cpu())
            preds.append(p.argmax(-1).cpu())
            targets.append(torch.as_tensor(labels).reshape(-1))
    finally:
        core.train(was_training)
    if not preds:
        raise ConfigError("the evaluation data set is empty")
    return torch.cat(preds).numpy(), torch.cat(targets).numpy(), torch.cat(probs).numpy()


@TASKS.register("classification")
class ClassificationTask:
    """Cross-entropy (+ auxiliary losses such as the SMoA load balance); main metric: overall accuracy (%)."""

    main_metric = "acc"
    higher_is_better = True

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, Config) else Config(dict(cfg or {}))
        self.label_smoothing = float((self.cfg.get("train") or {}).get("label_smoothing", 0.0))
        self.extras: dict[str, Any] = {}
        self.epoch: int | None = None
        self.autocast = None  # set by the trainer: its AMP policy's autocast

    def build_model(self, cfg: Config | None = None, ckpt: str | None = None) -> nn.Module:
        return build_classifier(self.cfg if cfg is None else cfg, ckpt)

    def check_data(self, model: nn.Module, dataset: Any, name: str) -> None:
        """A data set with more classes than the model's head is a config error, found before training starts."""
        head_classes = _num_classes(model)
        data_classes = getattr(dataset, "num_classes", None)
        if head_classes is not None and data_classes is not None and data_classes > head_classes:
            raise ConfigError(f"{self.cfg.source_of('model.num_classes')}: model.num_classes is {head_classes} but "
                              f"the {name} data set has {data_classes} classes")

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        pts, labels = batch
        dev = device_of(model)
        pts, labels = pts.to(dev, non_blocking=True).float(), torch.as_tensor(labels).to(dev).long().reshape(-1)
        logits, aux = training_forward(model, pts)
        logits = logits.float()
        ce = cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        loss = ce
        logs = {"ce": float(ce.detach())}
        for k, v in aux.items():
            loss = loss + v
            logs[k] = float(v.detach())
        logs["loss"] = float(loss.detach())
        logs["acc"] = 100.0 * float((logits.detach().argmax(-1) == labels).float().mean())
        return loss, logs

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Accuracy and mean-class accuracy; the confusion matrix and the PEFT method's evaluation records (e.g.
        Adapter-X's expert usage) go to ``self.extras``."""
        method = get_method(model)
        if method is not None:
            method.start_evaluation(unwrap(model))
        pred, target, _ = predict(model, loader, autocast=self.autocast)
        n = _num_classes(model) or int(max(pred.max(), target.max()) + 1)
        metrics, cm = accuracy_metrics(pred, target, n)
        self.extras = {"confusion_matrix": cm.tolist()}
        if method is not None:
            self.extras.update(method.evaluation_records(unwrap(model)))
        return metrics


def _num_classes(model: nn.Module) -> int | None:
    try:
        return describe_backbone(unwrap(model)).describe().get("num_classes")
    except ConfigError:
        return None

