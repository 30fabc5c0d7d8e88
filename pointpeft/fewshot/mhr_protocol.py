"""MHR's cross-task protocol (Caccia et al. 2023, after Poly): train the LoRA inventory and routing on several
training tasks, then adapt to an unseen task from a few shots with

* **Poly**: whole-adapter routing, trained multi-task with ``mode: poly``; routing and inventory fine-tuned;
* **MHR**: multi-head routing (rank slices routed separately); routing and inventory fine-tuned;
* **MHR-z**: the MHR inventory frozen, only the new task's routing (and the head) fine-tuned;
* **MHR-μ**: the MHR inventory averaged into one LoRA adapter (no routing) that is fine-tuned.

Tasks here are disjoint class subsets of one labelled source data set (ModelNet40, the synthetic shapes ...):
``heldout_classes`` classes, drawn with ``seed``, are kept for the unseen task's few-shot folds, the others are cut
into ``num_tasks`` training tasks of ``classes_per_task`` classes. Both phases run on the engine's Trainer, through
two tasks registered here: ``mhr_multitask`` (one training task per step, its slice of a shared head) and
``mhr_fewshot`` (loads the inventory, adds the unseen task's routing row, switches the mode).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pointpeft.config import Config
from pointpeft.data import build_dataset
from pointpeft.engine import train_state as ck
from pointpeft.engine.classification import ClassificationTask, accuracy_metrics, build_classifier
from pointpeft.errors import CheckpointError, ConfigError
from pointpeft.fewshot.folds import ensure_folds
from pointpeft.fewshot.options import FewShotOptions, MhrProtocolOptions, mhr_options
from pointpeft.fewshot.sweep import (
    FoldJob,
    SweepReport,
    check_same_run,
    run_fold,
    run_sweep,
    write_combined_table,
)
from pointpeft.fewshot.sweep import _set as set_key
from pointpeft.fewshot.table import format_table, read_fold
from pointpeft.peft import training_forward, unwrap
from pointpeft.peft.mhr import RoutedLora, add_task, set_task, to_mode
from pointpeft.registry import DATASETS, TASKS
from pointpeft.utils.io import atomic_write_json, atomic_write_text
from pointpeft.utils.misc import get_logger

log = get_logger("fewshot.mhr")

ROW_NAMES = {"poly": "Poly", "mhr": "MHR", "mhr_z": "MHR-z", "mhr_mu": "MHR-μ"}
#: the multi-task training mode each adaptation mode starts from
TRAINED_WITH = {"poly": "poly", "mhr": "mhr", "mhr_z": "mhr", "mhr_mu": "mhr"}


# -- class split ---------------------------------------------------------------------------------------------------

def split_classes(labels: np.ndarray, mopts: MhrProtocolOptions,
                  eligible: Sequence[int] | None = None) -> tuple[list[int], list[list[int]]]:
    """(held-out classes, training tasks as lists of classes): disjoint, drawn with ``mopts.seed``. The held-out
    classes are the first ``eligible`` ones of the seeded class order (``eligible``: classes with clouds enough for
    every requested episode, :func:`episode_eligible_classes`; None = every class), the tasks the next classes of
    that order; with every class eligible the draw is the plain first-k split."""
    classes = np.unique(labels)
    need = mopts.heldout_classes + mopts.num_tasks * mopts.classes_per_task
    if need > len(classes):
        raise ConfigError(f"fewshot.mhr: {mopts.heldout_classes} held-out + {mopts.num_tasks} tasks x "
                          f"{mopts.classes_per_task} classes = {need} classes, the source has {len(classes)}")
    ok = set(classes.tolist() if eligible is None else (int(c) for c in eligible))
    if len(ok) < mopts.heldout_classes:
        raise ConfigError(f"fewshot.mhr.heldout_classes: {mopts.heldout_classes} held-out classes, but only "
                          f"{len(ok)} classes hold clouds enough for the requested episodes: {sorted(ok)}")
    order = np.random.default_rng(np.random.SeedSequence([mopts.seed, 7919])).permutation(classes).tolist()
    heldout = [c for c in order if c in ok][: mopts.heldout_classes]
    rest = [c for c in order if c not in heldout][: need - mopts.heldout_classes]
    tasks = [sorted(rest[i * mopts.classes_per_task:(i + 1) * mopts.classes_per_task]) for i in range(mopts.num_tasks)]
    return sorted(heldout), tasks


def episode_eligible_classes(train_labels: np.ndarray, query_labels: np.ndarray | None,
                             opts: FewShotOptions) -> list[int]:
    """Classes that can be drawn for every requested episode setting: the largest shot of support clouds and
    ``opts.query`` query clouds (from ``query_labels``, the test split; from the rest of the training clouds when
    None), the rule of :func:`pointpeft.data.fewshot.generate_fewshot_folds`. A held-out class below it would make
    the larger settings impossible after the inventories are trained."""
    shot = max(opts.shot)
    need_train = shot if query_labels is not None else shot + opts.query
    return [int(c) for c in np.unique(train_labels)
            if (train_labels == c).sum() >= need_train
            and (query_labels is None or (query_labels == c).sum() >= opts.query)]


class ClassSubset(Dataset):
    """The clouds of ``classes`` in ``dataset``, original labels kept (few-shot generation reads ``labels``)."""

    def __init__(self, dataset: Any, classes: Sequence[int]) -> None:
        self.dataset = dataset
        self.index = np.flatnonzero(np.isin(dataset.labels, list(classes)))
        self.labels = np.asarray(dataset.labels)[self.index]
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.index)

    def get_points(self, i: int) -> np.ndarray:
        return self.dataset.get_points(int(self.index[i]))

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.index[i])]


@DATASETS.register("class_tasks")
class ClassTasks(Dataset):
    """Training tasks over one labelled data set, for multi-task training: item ``i`` is a chunk of ``chunk``
    clouds of a single task, ``(points (chunk, N, C), labels (chunk,))`` with global labels ``task * C + j`` for
    the task's ``j``-th class (C classes per task), so a step routes one task and trains its slice of the head.

    Args:
        source: the data set node (no split), e.g. ``{type: modelnet40, root: ...}``.
        tasks: the classes of every task (equal sizes).
        split: train | test.
        chunk: clouds per item (one task's mini-batch); an incomplete last chunk of a task is left out.
        per_class: at most this many clouds per class (null = all).
        seed: chunking and capping order.
        transforms: the source's per-cloud transforms.
    """

    def __init__(self, source: Mapping[str, Any], tasks: Sequence[Sequence[int]], split: str = "train",
                 chunk: int = 16, per_class: int | None = None, seed: int = 0, transforms: Any = None) -> None:
        if not tasks or len({len(t) for t in tasks}) != 1 or not tasks[0]:
            raise ConfigError(f"class_tasks: tasks must be non-empty class lists of equal size, got {tasks!r}")
        if chunk < 1:
            raise ConfigError(f"class_tasks: chunk must be >= 1, got {chunk}")
        node = {k: v for k, v in dict(source).items() if k != "split"}
        if transforms is not None:
            node["transforms"] = transforms
        self.source = build_dataset({**node, "split": split})
        self.tasks = [[int(c) for c in t] for t in tasks]
        self.per_task = len(self.tasks[0])
        labels = np.asarray(self.source.labels)
        names = list(getattr(self.source, "classes", []))
        self.classes = [names[c] if c < len(names) else f"class_{c}" for t in self.tasks for c in t]
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104729]))
        self.chunks: list[np.ndarray] = []
        self.chunk_labels: list[np.ndarray] = []
        for t, classes in enumerate(self.tasks):
            idx, lab = [], []
            for j, c in enumerate(classes):
                members = rng.permutation(np.flatnonzero(labels == c))[: per_class or None]
                idx.append(members)
                lab.append(np.full(len(members), t * self.per_task + j))
            order = rng.permutation(sum(len(i) for i in idx))
            idx_t, lab_t = np.concatenate(idx)[order], np.concatenate(lab)[order]
            for k in range(len(idx_t) // chunk):
                self.chunks.append(idx_t[k * chunk:(k + 1) * chunk])
                self.chunk_labels.append(lab_t[k * chunk:(k + 1) * chunk])
        if not self.chunks:
            raise ConfigError(f"class_tasks ({split}): no task has {chunk} clouds; lower the chunk size")
        self.labels = np.concatenate(self.chunk_labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pts = torch.stack([torch.as_tensor(self.source[int(j)][0]) for j in self.chunks[i]])
        return pts, torch.as_tensor(self.chunk_labels[i], dtype=torch.long)


# -- the two engine tasks ------------------------------------------------------------------------------------------

def _classes_per_task(cfg: Config) -> int:
    tasks = ((cfg.get("data") or {}).get("train") or {}).get("tasks")
    if not tasks:
        raise ConfigError(f"{cfg.source_of('data.train')}: train.task mhr_multitask needs a 'type: class_tasks' "
                          "data.train node with tasks")
    return len(tasks[0])


@TASKS.register("mhr_multitask")
class MultiTaskClassification(ClassificationTask):
    """Multi-task training of an MHR/Poly model: every chunk is one task; ``set_task`` routes it and the loss is
    the cross-entropy over that task's slice of the shared head. Metric: accuracy within the task (%)."""

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        self.per_task = _classes_per_task(self.cfg)

    def _chunks(self, model: nn.Module, batch: Any) -> Any:
        pts, labels = batch
        dev = next(unwrap(model).parameters()).device
        pts, labels = pts.to(dev).float(), torch.as_tensor(labels).to(dev).long()
        if pts.dim() == 3:  # a single chunk without the batch dimension
            pts, labels = pts[None], labels[None]
        for b in range(pts.shape[0]):
            task = int(labels[b, 0]) // self.per_task
            if bool((labels[b] // self.per_task != task).any()):
                raise ConfigError("mhr_multitask: a chunk mixes tasks; use the class_tasks data set")
            set_task(model, task)
            yield task, pts[b], labels[b] - task * self.per_task

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss = torch.zeros(())
        n = correct = 0
        aux_sum = 0.0
        for task, pts, target in self._chunks(model, batch):
            logits, aux = training_forward(model, pts)
            logits = logits.float()[:, task * self.per_task:(task + 1) * self.per_task]
            part = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing) * len(target)
            for v in aux.values():
                part = part + v * len(target)
                aux_sum += float(v.detach()) * len(target)
            loss = loss.to(part.device) + part
            n += len(target)
            correct += int((logits.detach().argmax(-1) == target).sum())
        loss = loss / max(n, 1)
        return loss, {"loss": float(loss.detach()), "aux": aux_sum / max(n, 1), "acc": 100.0 * correct / max(n, 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        core = unwrap(model)
        was = core.training
        core.eval()
        preds, targets = [], []
        try:
            for batch in loader:
                for task, pts, target in self._chunks(core, batch):
                    logits = core(pts).float()[:, task * self.per_task:(task + 1) * self.per_task]
                    preds.append((logits.argmax(-1) + task * self.per_task).cpu())
                    targets.append((target + task * self.per_task).cpu())
        finally:
            core.train(was)
        pred, target = torch.cat(preds).numpy(), torch.cat(targets).numpy()
        metrics, cm = accuracy_metrics(pred, target, int(max(pred.max(), target.max())) + 1)
        self.extras = {"confusion_matrix": cm.tolist()}
        return metrics


def load_inventory(model: nn.Module, run_dir: str | Path) -> list[str]:
    """Copy a multi-task run's routed LoRA tensors (inventory + routing) and the other trained backbone tensors of
    the same shape into ``model``; the task head (other classes) is left out. Returns the copied keys."""
    path = Path(run_dir) / ck.LAST_NAME
    state = ck.read_train_state(path)["model"]
    inner = unwrap(model)
    own = inner.state_dict(keep_vars=True)
    routed = {f"{name}.{p}" for name, m in inner.named_modules() if isinstance(m, RoutedLora)
              for p in ("lora_A", "lora_B", "routing")}
    missing = sorted(k for k in routed if k not in state)
    if missing:
        raise CheckpointError(f"{path}: no MHR inventory tensor {missing[0]!r} ({len(missing)} missing); was it "
                              "trained with peft type mhr and the same target modules?")
    copied = []
    with torch.no_grad():
        for k, v in state.items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v.to(own[k].dtype))
                copied.append(k)
            elif k in routed:
                raise CheckpointError(f"{path}: {k!r} has shape {tuple(v.shape)}, the model expects "
                                      f"{tuple(own[k].shape)} (num_skills / r / heads / num_tasks differ)")
    return copied


@TASKS.register("mhr_fewshot")
class MhrFewShotClassification(ClassificationTask):
    """Few-shot adaptation of a multi-task inventory: a model shaped as in multi-task training
    (``fewshot.mhr.trained_mode``, ``train_tasks`` routing rows) gets the inventory of ``fewshot.mhr.inventory``,
    a routing row for the unseen task, and the mode ``fewshot.mhr.adapt_mode``. The result must be the model that
    ``peft:`` describes, so the run folder loads like any other (tools/test.py, ``load_run_model``)."""

    def build_model(self, cfg: Config | None = None, ckpt: str | None = None) -> nn.Module:
        from pointpeft.peft import build_peft_config

        cfg = self.cfg if cfg is None else cfg
        node = (cfg.get("fewshot") or {}).get("mhr") or {}
        mopts = MhrProtocolOptions(**node)
        if not (mopts.inventory and mopts.adapt_mode and mopts.trained_mode and mopts.train_tasks):
            raise ConfigError(f"{cfg.source_of('fewshot.mhr')}: train.task mhr_fewshot needs fewshot.mhr.inventory, "
                              "adapt_mode, trained_mode and train_tasks (tools/fewshot.py --protocol mhr sets them)")
        trained = _copy(cfg)
        _set(trained, "peft", {**dict(cfg.get("peft") or {}), "mode": mopts.trained_mode,
                               "num_tasks": mopts.train_tasks})
        model = build_classifier(trained, ckpt)
        copied = load_inventory(model, mopts.inventory)
        if mopts.adapt_mode != "mhr_mu":
            add_task(model, init=mopts.routing_init)
        to_mode(model, mopts.adapt_mode)
        have, want = unwrap(model).peft_config.to_dict(), build_peft_config(dict(cfg.get("peft") or {})).to_dict()
        if have != want:
            diff = {k: (have.get(k), want.get(k)) for k in set(have) | set(want) if have.get(k) != want.get(k)}
            raise ConfigError(f"{cfg.source_of('peft')}: after adaptation the model's peft config differs from peft: "
                              f"{diff} (model vs config)")
        log.info("mhr few-shot: %d tensors from %s, mode %s", len(copied), mopts.inventory, mopts.adapt_mode)
        return model


# -- the protocol --------------------------------------------------------------------------------------------------

def _set(cfg: Config, dotted: str, value: Any) -> None:
    set_key(cfg, dotted, value, "<fewshot mhr protocol>")


def _copy(cfg: Config) -> Config:
    return Config(copy.deepcopy(cfg.to_dict()), sources=dict(cfg.sources))


def multitask_config(cfg: Config, mopts: MhrProtocolOptions, source: Mapping[str, Any], tasks: list[list[int]],
                     mode: str) -> Config:
    """The config of the multi-task phase (``mode`` poly or mhr): class_tasks data, a head over every task's
    classes, ``num_tasks`` routing rows."""
    out = _copy(cfg)
    peft = dict(out.get("peft") or {})
    if peft.get("type") != "mhr":
        raise ConfigError(f"{cfg.source_of('peft')}: --protocol mhr needs peft type mhr, got {peft.get('type')!r}")
    peft.update(mode=mode, num_tasks=len(tasks))
    _set(out, "peft", peft)
    data = out.get("data") or {}
    chunk = int(data.get("batch_size", 32))
    train_node = data.get("train") or {}
    src = {k: v for k, v in dict(source).items() if k != "split"}
    if train_node.get("npoints"):  # the clouds the few-shot folds use
        src["npoints"] = train_node["npoints"]
    common = {"type": "class_tasks", "source": src,
              "tasks": tasks, "chunk": chunk, "seed": mopts.seed}
    _set(out, "data.train", {**common, "split": "train", "per_class": mopts.train_per_class,
                             "transforms": train_node.get("transforms")})
    _set(out, "data.val", {**common, "split": "test"})
    _set(out, "data.batch_size", 1)
    _set(out, "data.val_batch_size", 1)
    if (out.get("data") or {}).get("test") is not None:
        out["data"]["test"] = None
    _set(out, "model.num_classes", len(tasks) * len(tasks[0]))
    _set(out, "train.task", "mhr_multitask")
    _set(out, "train.epochs", mopts.epochs)
    if mopts.lr is not None:
        _set(out, "optimizer.lr", mopts.lr)
    return out


def adaptation_config(cfg: Config, mopts: MhrProtocolOptions, inventory: Path, trained_mode: str,
                      adapt_mode: str, num_tasks: int) -> Config:
    """The few-shot config of one adaptation mode (the sweep then fills each fold's data)."""
    out = _copy(cfg)
    peft = dict(out.get("peft") or {})
    peft.update(mode=adapt_mode, num_tasks=num_tasks + (adapt_mode != "mhr_mu"))  # + the unseen task's row
    _set(out, "peft", peft)
    _set(out, "train.task", "mhr_fewshot")
    _set(out, "fewshot.mhr.inventory", str(inventory))
    _set(out, "fewshot.mhr.adapt_mode", adapt_mode)
    _set(out, "fewshot.mhr.trained_mode", trained_mode)
    _set(out, "fewshot.mhr.train_tasks", num_tasks)
    if adapt_mode in mopts.adapt_lr:
        _set(out, "optimizer.lr", float(mopts.adapt_lr[adapt_mode]))
    return out


def _train_multitask(cfg: Config, run_dir: Path, ckpt: str | None, overwrite: bool, log_level: int) -> None:
    if overwrite and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    done = read_fold(run_dir)
    if done is not None:
        check_same_run(run_dir, cfg, ckpt, saved=done)
        log.info("multi-task inventory %s finished before; reused", run_dir)
        return
    check_same_run(run_dir, cfg, ckpt)
    log.info("multi-task training -> %s", run_dir)
    run_fold(FoldJob("multitask", 0, 0, 0, str(run_dir), cfg.to_dict(), dict(cfg.sources), ckpt, log_level))


def run_mhr_protocol(cfg: Config, opts: FewShotOptions, root: str | Path = "experiments", ckpt: str | None = None,
                     name: str = "mhr", overwrite: bool = False, log_level: int = 20) -> SweepReport:
    """Split the source's classes, write the unseen task's episodes, train the inventories (Poly and/or MHR) on
    the training tasks, then sweep the few-shot folds once per mode. Rows Poly / MHR / MHR-z / MHR-μ go to
    ``<root>/fewshot/<name>/fewshot.json`` and the combined table."""
    t0 = time.time()
    mopts = mhr_options(cfg, opts)
    source = mopts.source or opts.generate_from
    if source is None:
        raise ConfigError(f"{cfg.source_of('fewshot')}: --protocol mhr needs a source data set: fewshot.mhr.source "
                          "or fewshot.generate_from (e.g. {type: modelnet40, root: datasets/ModelNet40})")
    if max(opts.way) > mopts.heldout_classes:
        raise ConfigError(f"{cfg.source_of('fewshot')}: {max(opts.way)}-way episodes need fewshot.mhr."
                          f"heldout_classes >= {max(opts.way)}, got {mopts.heldout_classes}")
    node = {k: v for k, v in dict(source).items() if k != "split"}
    train_set = build_dataset({**node, "split": "train"})
    query_set = build_dataset({**node, "split": "test"}) if opts.query_from == "test" else None
    eligible = episode_eligible_classes(np.asarray(train_set.labels),
                                        None if query_set is None else np.asarray(query_set.labels), opts)
    heldout, tasks = split_classes(np.asarray(train_set.labels), mopts, eligible)
    names = list(getattr(train_set, "classes", []))
    log.info("held-out classes %s; %d training tasks %s", [names[c] for c in heldout] if names else heldout,
             len(tasks), tasks)
    base = Path(root) / "fewshot" / name
    fs_opts = copy.copy(opts)
    fs_opts.root = str(base / "episodes")  # the unseen task's folds: held-out classes only

    loaded = {"train": train_set, "test": query_set}

    def build(split: str) -> Dataset:
        ds = loaded.get(split) or build_dataset({**node, "split": split})
        return ClassSubset(ds, heldout)

    folds_root = ensure_folds(fs_opts, build=build, recipe_extra={"source": node, "heldout_classes": heldout,
                                                                   "mhr_seed": mopts.seed})
    split_info = {"heldout_classes": heldout, "training_tasks": tasks, "source": node}
    atomic_write_json(base / "split.json", split_info)

    trained, skipped, failed, rows = [], [], {}, []
    for trained_mode in dict.fromkeys(TRAINED_WITH[m] for m in mopts.modes):
        mt_cfg = multitask_config(cfg, mopts, node, tasks, trained_mode)
        _train_multitask(mt_cfg, base / f"multitask_{trained_mode}", ckpt, overwrite, log_level)
    for mode in mopts.modes:
        inventory = (base / f"multitask_{TRAINED_WITH[mode]}").resolve()
        ad_cfg = adaptation_config(cfg, mopts, inventory, TRAINED_WITH[mode], mode, len(tasks))
        rep = run_sweep(ad_cfg, f"{name}/{mode}", fs_opts, root, ckpt=ckpt, overwrite=overwrite,
                        log_level=log_level, folds_root=folds_root,
                        extra={"protocol": "mhr", "mode": mode, **split_info})
        trained += rep.trained
        skipped += rep.skipped
        failed.update(rep.failed)
        rows.append({**rep.summary, "name": ROW_NAMES[mode]})
    table = format_table(rows)
    atomic_write_json(base / "fewshot.json", {"protocol": "mhr", **split_info, "rows": rows})
    atomic_write_text(base / "fewshot.md", table)
    write_combined_table(Path(root) / "fewshot")
    return SweepReport(trained, skipped, failed, {"rows": rows}, table, time.time() - t0)
