"""The ``fewshot:`` config section as checked dataclasses (unknown keys are errors naming file and key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pointpeft.config import Config, build_dataclass

REPORTS = ("last", "best")


def parse_folds(spec: Any) -> list[int]:
    """``"0-9"``, ``"0,2,5-7"``, ``3`` or ``[0, 1, 2]`` -> sorted unique fold ids."""
    if isinstance(spec, bool):
        raise ValueError(f"folds must be a range like '0-9' or a list of integers, got {spec!r}")
    if isinstance(spec, int):
        items: list[Any] = [spec]
    elif isinstance(spec, str):
        items = [p.strip() for p in spec.replace(" ", ",").split(",") if p.strip()]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise ValueError(f"folds must be a range like '0-9' or a list of integers, got {spec!r}")
    out: set[int] = set()
    for item in items:
        if isinstance(item, str) and "-" in item.strip("-"):
            lo, hi = item.split("-", 1)
            try:
                a, b = int(lo), int(hi)
            except ValueError:
                raise ValueError(f"bad fold range {item!r} (expected e.g. '0-9')") from None
            if b < a:
                raise ValueError(f"bad fold range {item!r}: end before start")
            out.update(range(a, b + 1))
        else:
            try:
                out.add(int(item))
            except (TypeError, ValueError):
                raise ValueError(f"bad fold {item!r} (expected an integer or a range like '0-9')") from None
    if not out:
        raise ValueError("folds is empty")
    if min(out) < 0:
        raise ValueError(f"fold ids must be >= 0, got {min(out)}")
    return sorted(out)


def _int_list(name: str, value: Any) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer or a list of them, got {value!r}")
        out.append(v)
    if not out:
        raise ValueError(f"{name} is empty")
    return list(dict.fromkeys(out))


@dataclass
class MhrProtocolOptions:
    """``fewshot.mhr``: MHR's cross-task protocol (multi-task inventory training, then few-shot adaptation).

    The source data set's classes are split by ``seed``: ``heldout_classes`` classes make the unseen task's
    few-shot folds, the rest are cut into ``num_tasks`` disjoint training tasks of ``classes_per_task`` classes.
    """

    source: dict[str, Any] | None = None  # data set node without split, e.g. {type: modelnet40, root: ...}
    heldout_classes: int = 10  # classes kept for the unseen few-shot task (>= the largest way)
    num_tasks: int = 6  # training tasks (disjoint class subsets of the other classes)
    classes_per_task: int = 5
    train_per_class: int | None = None  # cap on training clouds per class in the multi-task phase (null = all)
    epochs: int = 100  # multi-task training epochs
    lr: float | None = None  # multi-task learning rate (null = the config's optimizer.lr)
    modes: list[str] = field(default_factory=lambda: ["poly", "mhr", "mhr_z", "mhr_mu"])
    adapt_lr: dict[str, float] = field(default_factory=lambda: {"mhr_z": 1.0e-2})  # few-shot lr per mode
    routing_init: str = "mean"  # the unseen task's routing row: mean of the training tasks' rows, or uniform
    seed: int = 0
    # set by the protocol in each adaptation fold's config (not by hand):
    inventory: str | None = None  # the multi-task run whose ckpt-last.pth holds the inventory
    adapt_mode: str | None = None  # poly | mhr | mhr_z | mhr_mu for this fold
    trained_mode: str | None = None  # poly | mhr: the mode (and peft.num_tasks) the inventory was trained with
    train_tasks: int | None = None

    def __post_init__(self) -> None:
        from pointpeft.peft.mhr import MODES

        for name in ("heldout_classes", "num_tasks", "classes_per_task", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"mhr.{name} must be a positive integer, got {v!r}")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ValueError(f"mhr.train_per_class must be >= 1 or null, got {self.train_per_class!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"mhr.modes must be a non-empty list of {list(MODES)}, got {self.modes!r}")
        bad = [m for m in self.adapt_lr if m not in MODES]
        if bad:
            raise ValueError(f"mhr.adapt_lr keys must be modes {list(MODES)}, got {bad}")
        if self.routing_init not in ("mean", "uniform"):
            raise ValueError(f"mhr.routing_init must be mean or uniform, got {self.routing_init!r}")
        for name in ("adapt_mode", "trained_mode"):
            if getattr(self, name) is not None and getattr(self, name) not in MODES:
                raise ValueError(f"mhr.{name} must be one of {list(MODES)}, got {getattr(self, name)!r}")
        if self.source is not None and not isinstance(self.source, dict):
            raise ValueError(f"mhr.source must be a data set node (a mapping with type), got {self.source!r}")


@dataclass
class FewShotOptions:
    """The ``fewshot:`` section: which episodes, where they are, how to make them, what to report."""

    way: list[int] = field(default_factory=lambda: [5, 10])
    shot: list[int] = field(default_factory=lambda: [10, 20])
    folds: Any = "0-9"  # '0-9', '0,3,5-7' or a list of ids
    root: str = "datasets/ModelNetFewshot"  # <root>/<way>way<shot>shot/<fold>.pkl
    generate_from: dict[str, Any] | None = None  # data set node (no split): missing episodes are generated from it
    query_from: str = "test"  # generated queries from the source's test split (Point-BERT) or the rest of train
    query: int = 20  # query clouds per class in generated episodes (the originals use 20)
    seed: int = 0  # seed of generated episodes
    report: str = "last"  # accuracy per fold: last epoch's query accuracy, or best epoch (the originals' max)
    jobs: int = 1  # folds trained in parallel processes (torch threads = cores / jobs each)
    mhr: dict[str, Any] | None = None  # MhrProtocolOptions for --protocol mhr

    def __post_init__(self) -> None:
        self.way = _int_list("way", self.way)
        self.shot = _int_list("shot", self.shot)
        self.fold_ids = parse_folds(self.folds)
        if self.query_from not in ("test", "train"):
            raise ValueError(f"query_from must be test or train, got {self.query_from!r}")
        if self.report not in REPORTS:
            raise ValueError(f"report must be one of {list(REPORTS)}, got {self.report!r}")
        if isinstance(self.query, bool) or not isinstance(self.query, int) or self.query < 1:
            raise ValueError(f"query must be a positive integer, got {self.query!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {self.jobs!r}")
        if self.generate_from is not None and (not isinstance(self.generate_from, dict)
                                               or "type" not in self.generate_from):
            raise ValueError(f"generate_from must be a data set node with a type, got {self.generate_from!r}")

    @property
    def settings(self) -> list[tuple[int, int]]:
        return [(w, s) for w in self.way for s in self.shot]


def fewshot_options(cfg: Config) -> FewShotOptions:
    """The checked ``fewshot:`` section of ``cfg`` (``fewshot.mhr`` is checked too, used or not)."""
    opts = build_dataclass(FewShotOptions, cfg.get("fewshot"), "fewshot", cfg)
    if opts.mhr is not None:
        mhr_options(cfg, opts)
    return opts


def mhr_options(cfg: Config, opts: FewShotOptions) -> MhrProtocolOptions:
    """The checked ``fewshot.mhr`` section (defaults when absent)."""
    return build_dataclass(MhrProtocolOptions, opts.mhr or {}, "fewshot.mhr", cfg)
