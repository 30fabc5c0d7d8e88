"""Find the few-shot episodes a sweep needs, generating missing ones from a labelled data set when asked.

Generated episodes go into the same ``<root>/<way>way<shot>shot/<fold>.pkl`` layout as Point-BERT's released
``ModelNetFewshot`` folder, next to a ``fewshot_source.json`` manifest (source node, seed, queries) so a later
sweep can tell that the files on disk came from the same recipe and never silently mixes two.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from pointpeft.data import build_dataset, generate_fewshot_folds
from pointpeft.data.base import resolve_root
from pointpeft.data.fewshot import episode_path
from pointpeft.errors import ConfigError, DataError
from pointpeft.fewshot.options import FewShotOptions
from pointpeft.utils.io import atomic_write_json
from pointpeft.utils.misc import get_logger

log = get_logger("fewshot")

MANIFEST = "fewshot_source.json"


def _missing(root: Path, way: int, shot: int, folds: Iterable[int]) -> list[int]:
    out = []
    for fold in folds:
        try:
            episode_path(root, way, shot, fold)
        except DataError:
            out.append(fold)
    return out


def generation_recipe(opts: FewShotOptions) -> dict[str, Any]:
    """What makes generated episodes what they are (written to, and checked against, the manifest)."""
    return {"generate_from": opts.generate_from, "seed": opts.seed, "query": opts.query,
            "query_from": opts.query_from}


def _check_manifest(root: Path, recipe: dict[str, Any]) -> None:
    path = root / MANIFEST
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); delete it or choose another fewshot.root") from None
    diffs = [k for k in recipe if saved.get(k) != recipe[k]]
    if diffs:
        detail = ", ".join(f"{k}: on disk {saved.get(k)!r} vs now {recipe[k]!r}" for k in diffs)
        raise ConfigError(f"{root} holds episodes generated with another recipe ({detail}); choose another "
                          "fewshot.root (--folds-root) or the same generation settings")


def ensure_folds(opts: FewShotOptions, settings: Iterable[tuple[int, int]] | None = None,
                 folds: Iterable[int] | None = None, *, build: Callable[[str], Dataset] | None = None,
                 recipe_extra: dict[str, Any] | None = None) -> Path:
    """Make sure every (way, shot, fold) episode exists under ``opts.root``; returns the resolved root.

    Missing episodes are generated from ``opts.generate_from`` (support from its train split, queries from its
    test split or the rest of train) with ``opts.seed``; without ``generate_from`` a missing episode is an error
    that says how to get it. ``build(split)`` replaces the data set built from ``generate_from`` (MHR's protocol
    passes the held-out classes), ``recipe_extra`` goes into the manifest.
    """
    settings = list(settings if settings is not None else opts.settings)
    folds = list(folds if folds is not None else opts.fold_ids)
    root = resolve_root(opts.root)
    todo = [(w, s) for w, s in settings if _missing(root, w, s, folds)]
    if not todo:
        return root
    if opts.generate_from is None and build is None:
        w, s = todo[0]
        episode_path(root, w, s, _missing(root, w, s, folds)[0])  # raises DataError naming the file
    recipe = {**generation_recipe(opts), **(recipe_extra or {})}
    _check_manifest(root, recipe)
    if not (root / MANIFEST).is_file() and any(root.glob("*way*shot/*.pkl")):
        raise ConfigError(f"{root} holds episodes that were not generated here (no {MANIFEST}), e.g. Point-BERT's "
                          f"released folder, and lacks {todo[0][0]}way{todo[0][1]}shot folds {folds}; generate into "
                          "another fewshot.root (--folds-root) instead of mixing the two")
    if build is None:
        node = dict(opts.generate_from or {})
        node.pop("split", None)

        def build(split: str) -> Dataset:
            return build_dataset({**node, "split": split})

    support = build("train")
    query = build("test") if opts.query_from == "test" else None
    for way, shot in todo:
        generate_fewshot_folds(support, way, shot, folds=max(folds) + 1, query_per_class=opts.query,
                               seed=opts.seed, out_dir=root, query_dataset=query)
    atomic_write_json(root / MANIFEST, recipe)
    log.info("generated few-shot episodes %s in %s", ", ".join(f"{w}way{s}shot" for w, s in todo), root)
    return root
