#!/usr/bin/env python
"""The real-data table (docs/results.md): fine-tune every method from one pretrained backbone with one budget and
write the table and plots from the runs' results.json files. Every step is resumable: finished runs are skipped,
interrupted ones resumed.

With ``--ledger results/NAME`` each finished run's summary files (config.yaml, results.json; never weights) are
copied into that committed tree, a run whose ledger entry is finished is never run again, and the tables are built
from the ledger alone — so a fresh clone resumes where the last sitting stopped and rebuilds every table:

    python scripts/sweep.py --ckpt ../shared/weights/point_mae_small_mn40.pth --ledger results/mn40-small \\
        --search optimizer.lr=2.5e-4,5e-4,1e-3,2e-3 --search-methods linear adapterx full       # 1. recipe search
    python scripts/sweep.py --ckpt ... --ledger results/mn40-small --use-search                 # 2. main table
    python scripts/sweep.py --ckpt ... --ledger results/mn40-small --use-search \\
        --efficiency 10 100 --methods linear full adapterx dapt_x                                # 3. data efficiency
    python scripts/sweep.py --ckpt ... --ledger results/mn40-small --use-search \
        --fewshot linear full adapterx dapt_x --fewshot-epochs 30 --mhr-epochs 10                # 4. few-shot + MHR
    python scripts/sweep.py --ckpt ... --ledger results/mn40-small --use-search --fewshot linear --skip-mhr
                                                                   # one method a sitting, MHR rows in a later one
    python scripts/sweep.py --ledger results/mn40-small --plan                                  # what is left
    python scripts/sweep.py --ledger results/mn40-small --table-only                            # rebuild the tables

The recipe search trains on the budget's training subset and scores on a validation split carved out of the
*training* split (``--val-per-class`` clouds per class, disjoint from the training subset); the test split is never
looked at to choose. ``--use-search`` then gives every method its family's winner (one recipe per family: full
fine-tuning, linear probe, PEFT methods). The main number is the last epoch; the best epoch stands beside it.

Without ``--ckpt`` the sweep pretrains its own small backbone first (``--pretrain-epochs``), as earlier sweeps did.

Investigations go in the same file, below the main table, each with what it changes:

    python scripts/sweep.py --variant lr2e-3 --set optimizer.lr=2e-3 --methods adapterx   # same backbone, other recipe
    python scripts/sweep.py --table-only --also experiments/sweep-pretrain-all            # another root's rows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

from pointpeft.config import load_config
from pointpeft.engine.amp import AMP_MODES
from pointpeft.engine.launch import run as train_run
from pointpeft.engine.ledger import entry_status, finished_entries, is_finished, record_run, record_tree
from pointpeft.engine.summary import Row, collect, last_best_table, mean_std
from pointpeft.recipes import method_names
from pointpeft.utils.io import atomic_write_json, atomic_write_text
from pointpeft.utils.misc import get_logger, setup_logging

log = get_logger("sweep")
REPO = Path(__file__).resolve().parents[1]
METHODS = method_names()  # every method with a recipe in cfgs/_base_/peft
#: one recipe per family: a searched value is shared by the family's methods
SOLO_FAMILIES = ("full", "linear")
#: minutes per epoch assumed by --plan before a method has a finished run (small backbone, 50 clouds/class,
#: whole test split, fp32 on 2 cores); replaced by the ledger's own medians as soon as there are some
DEFAULT_EPOCH_MINUTES = {"full": 3.0, "linear": 0.8, "peft": 1.5}


def run_precision(budget: dict, args: argparse.Namespace) -> str:
    """Every run's ``train.amp``: the ledger's recorded precision, else this invocation's ``--amp``."""
    return budget.get("amp") or args.amp


def family(method: str) -> str:
    return method if method in SOLO_FAMILIES else "peft"


class Planned(NamedTuple):
    """One run of the sweep: where it goes (relative to the run root and to the ledger) and its train.py argv."""

    rel: Path
    method: str
    argv: list[str]
    note: str = ""


def _status(run_dir: Path) -> str:
    return entry_status(run_dir)


def _train(argv: list[str], run_dir: Path, entry: Path | None = None) -> None:
    if entry is not None and is_finished(entry):
        log.info("in the ledger already: %s", entry)
        return
    if _status(run_dir) == "finished":
        log.info("done already: %s", run_dir)
    else:
        if (run_dir / "ckpt-last.pth").is_file():
            argv = ["--resume", str(run_dir)]  # the run's own config.yaml holds every override
            log.info("resuming %s", run_dir)
        else:
            argv = [*argv, "--run-dir", str(run_dir), "--overwrite"]
        t0 = time.time()
        rc = train_run(argv)
        if rc != 0:
            raise SystemExit(f"sweep: run {run_dir} failed with exit code {rc}")
        log.info("finished %s in %.1f min", run_dir, (time.time() - t0) / 60)
    if entry is not None:
        record_run(run_dir, entry)
        log.info("recorded in the ledger: %s (commit it)", entry)


def _flow(node: dict) -> str:
    return json.dumps(node, separators=(", ", ": "))  # JSON is YAML flow style: one override value


def data_nodes(root: str, per_class: int | None, test_per_class: int | None, val_per_class: int | None = None,
               leaf: Path | None = None) -> list[str]:
    """``data.train`` / ``data.val`` overrides for the budget. With ``leaf`` the recipe's own data nodes are kept
    (transforms, per-batch resampling) and only their root and subset change. ``val_per_class`` scores on clouds
    of the *training* split that the training subset does not hold (the recipe search's validation split)."""
    if leaf is not None:
        data = load_config(leaf).get("data", {})
        train = {**data["train"], "root": root}
        test = {**data["val"], "root": root}
    else:  # the pretraining config's data nodes are not the fine-tuning recipe's: plain ModelNet40
        train = {"type": "modelnet40", "root": root, "split": "train", "npoints": 1024,
                 "transforms": [{"type": "scale_translate"}]}
        test = {"type": "modelnet40", "root": root, "split": "test", "npoints": 1024}
    if val_per_class:
        if not per_class:
            raise SystemExit("sweep: a validation split needs a training subset (--per-class > 0) to be carved "
                             "out of the rest of the training split")
        plain_train = {k: v for k, v in train.items() if k not in ("transforms",)}
        plain_train = {**plain_train, **{k: test[k] for k in ("npoints",) if k in test}}
        for k in ("npoints_fps", "fps_pool"):  # evaluation reads clouds as the test node does
            if k in test:
                plain_train[k] = test[k]
            else:
                plain_train.pop(k, None)
        test = {"type": "subset", "per_class": val_per_class, "skip": per_class, "seed": 0, "dataset": plain_train}
    elif test_per_class:
        test = {"type": "subset", "per_class": test_per_class, "seed": 0, "dataset": test}
    if per_class:
        train = {"type": "subset", "per_class": per_class, "seed": 0, "dataset": train}
    return [f"data.train={_flow(train)}", f"data.val={_flow(test)}"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_search(spec: str | None) -> tuple[str, list[str]] | None:
    """``optimizer.lr=5e-4,1e-3`` -> ("optimizer.lr", ["5e-4", "1e-3"])."""
    if not spec:
        return None
    key, _, values = spec.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not key or not vals:
        raise SystemExit(f"sweep: --search takes KEY=V1,V2,..., got {spec!r}")
    return key.strip(), vals


def search_rows(table_root: Path, budget: dict) -> dict[str, dict[str, Row]]:
    """{value: {method: row}} of the finished search runs in the ledger (or run root)."""
    search = budget.get("search") or {}
    out: dict[str, dict[str, Row]] = {}
    for value in search.get("values", []):
        folder = table_root / "search" / f"{search['key']}={value}"
        out[value] = {r.label: r for r in (collect([folder]) if folder.is_dir() else [])}
    return out


def _family_scores(rows: dict[str, dict[str, Row]], members: list[str]) -> dict[str, float]:
    """{value: mean last-epoch validation accuracy over the family's members}, for values all members finished."""
    return {value: statistics.mean(statistics.mean(by_method[m].values("acc", "last")) for m in members)
            for value, by_method in rows.items() if all(m in by_method for m in members)}


def bracketed_winner(grid: list[str], scores: dict[str, float]) -> str | None:
    """The best scored value of ``grid``, or None while the search cannot name one yet.

    A whole grid always names its best. A partial one names it only when the scored values are one contiguous
    stretch of the grid and the best lies strictly inside it on every side where the grid goes on: each unscored
    value then lies beyond a scored neighbour that already scored below the winner (the search assumes the score
    is unimodal in the value, and says which values it left unscored)."""
    done = [i for i, v in enumerate(grid) if v in scores]
    if not done:
        return None
    lo, hi = done[0], done[-1]
    if done != list(range(lo, hi + 1)):
        return None
    best = max(range(lo, hi + 1), key=lambda i: scores[grid[i]])
    if (best == lo and lo > 0) or (best == hi and hi < len(grid) - 1):
        return None
    return grid[best]


def family_verdicts(search: dict, rows: dict[str, dict[str, Row]]) -> dict[str, tuple[str | None, list[str]]]:
    """{family: (winning value or None, values its methods have not all finished)} from the search rows read once:
    the highest mean last-epoch validation accuracy over the family's searched methods (see ``bracketed_winner``
    for when a family with unscored values already has one)."""
    grid = search.get("values", [])
    out: dict[str, tuple[str | None, list[str]]] = {}
    for fam in {family(m) for m in search.get("methods", [])}:
        scores = _family_scores(rows, [m for m in search["methods"] if family(m) == fam])
        out[fam] = (bracketed_winner(grid, scores), [v for v in grid if v not in scores])
    return out


def search_winners(table_root: Path, budget: dict) -> dict[str, str]:
    """{family: winning value} of the ledger's search, for the families that have one."""
    search = budget.get("search") or {}
    verdicts = family_verdicts(search, search_rows(table_root, budget))
    return {fam: won for fam, (won, _) in verdicts.items() if won is not None}


def plan_runs(args: argparse.Namespace, budget: dict, table_root: Path, ckpt: str,
              planning: bool = False) -> list[Planned]:
    """The runs this invocation asks for, in order (search, then main or variant or efficiency). ``planning``
    lists runs whose searched value is not known yet instead of refusing them."""
    runs: list[Planned] = []
    search = parse_search(args.search)

    def ft(method: str, seed: int, per_class: int | None, val: int | None, extra: list[str]) -> list[str]:
        cfg = REPO / "cfgs" / "finetune" / "modelnet40" / f"{method}.yaml"
        if not cfg.is_file():
            raise SystemExit(f"sweep: {cfg} does not exist (methods with a recipe: {', '.join(METHODS)})")
        return ["--config", str(cfg), "--ckpt", ckpt, "--seed", str(seed), f"model.type={args.backbone}",
                f"train.epochs={args.epochs}", f"scheduler.warmup_epochs={args.warmup_epochs}", "train.progress=off",
                f"train.amp={run_precision(budget, args)}",
                *data_nodes(args.data_root, per_class, args.test_per_class or None, val, leaf=cfg), *extra]

    if search:
        key, values = search
        for value in values:
            for method in args.search_methods:
                runs.append(Planned(Path("search") / f"{key}={value}" / method / "seed0", method,
                                    ft(method, 0, args.per_class or None, args.val_per_class, [f"{key}={value}"]),
                                    f"search {key}={value}"))
        return runs
    winners = search_winners(table_root, budget) if args.use_search else {}
    key = (budget.get("search") or {}).get("key")

    def recipe(method: str) -> list[str]:
        if not args.use_search:
            return []
        if family(method) not in winners:
            if planning:
                return [f"{key}=<search pending>"]
            raise SystemExit(f"sweep: --use-search but the {family(method)} family ({method}) has no finished "
                             f"search winner in {table_root}/search; run the search first (--plan shows it)")
        return [f"{key}={winners[family(method)]}"]

    if args.variant:
        for seed in args.seeds:
            for method in args.methods:
                runs.append(Planned(Path("variants") / args.variant / method / f"seed{seed}", method,
                                    ft(method, seed, args.per_class or None, None,
                                       [*recipe(method), *args.set, f"exp_name={method}@{args.variant}"])))
        return runs
    if args.efficiency:
        for n in args.efficiency:
            for method in args.methods:
                runs.append(Planned(Path("efficiency") / f"pc{n}" / method / "seed0", method,
                                    ft(method, 0, n, None, recipe(method)), f"{n} clouds per class"))
        return runs
    for seed_list, methods in [(args.seeds, args.methods),
                               (args.more_seeds, [m for m in args.methods if m in args.seeds_for])]:
        for seed in seed_list:
            for method in methods:
                runs.append(Planned(Path("finetune") / method / f"seed{seed}", method,
                                    ft(method, seed, args.per_class or None, None, recipe(method))))
    return runs


def epoch_minutes(table_root: Path) -> dict[str, float]:
    """Median minutes per epoch of each method's finished runs in the ledger (for --plan's estimate)."""
    out: dict[str, float] = {}
    for r in collect([table_root]) if table_root.is_dir() else []:
        if r.seconds_per_epoch == r.seconds_per_epoch:  # not NaN
            out[r.label.split("@")[0]] = r.seconds_per_epoch / 60
    return out


def epoch_estimate(method: str, per_epoch: dict[str, float]) -> float:
    """Minutes an epoch of ``method`` is expected to take: its own ledger median, else the median over the
    ledger's methods of its family (a PEFT method not run yet costs about what the PEFT methods run so far did),
    else the family default."""
    if method in per_epoch:
        return per_epoch[method]
    kin = [mins for name, mins in per_epoch.items() if family(name) == family(method)]
    return statistics.median(kin) if kin else DEFAULT_EPOCH_MINUTES[family(method)]


def print_plan(runs: list[Planned], run_root: Path, table_root: Path, epochs: int) -> None:
    """What is finished (ledger), in progress (a checkpoint in the run root) and left, with an estimate."""
    per_epoch = epoch_minutes(table_root)
    left = 0.0
    for p in runs:
        done = is_finished(table_root / p.rel)
        state = "finished" if done else ("in progress" if (run_root / p.rel / "ckpt-last.pth").is_file()
                                         else "to run")
        minutes = 0.0 if done else epochs * epoch_estimate(p.method, per_epoch)
        left += minutes
        print(f"{state:12s} {str(p.rel):60s} {p.note:28s} {'' if done else f'~{minutes:.0f} min'}")
    print(f"{sum(not is_finished(table_root / p.rel) for p in runs)} of {len(runs)} runs left, ~{left / 60:.1f} h "
          "of this machine (estimate from the ledger's s/epoch, or defaults before any run finished)")


#: the MHR cross-task protocol's row (Poly, MHR, MHR-z, MHR-mu) runs with this config as one few-shot "method"
MHR_PROTOCOL = "mhr"
#: the few-shot settings (way, shot) of the table: the issue's two, not the configs' way x shot product (which
#: would add 5w20s and 10w10s and double the CPU time)
FEWSHOT_SETTINGS = ((5, 10), (10, 20))
FEWSHOT_FOLDS = 10


def fewshot_steps(args: argparse.Namespace) -> list[str]:
    """The few-shot step's methods in order: the --fewshot ones, then the MHR protocol rows unless --skip-mhr
    leaves them for a later invocation (one method per sitting, committed when it ends)."""
    return [*args.fewshot, *([] if args.skip_mhr else [MHR_PROTOCOL])]


def _fewshot_name(method: str) -> str:
    return "mhr_protocol" if method == MHR_PROTOCOL else method


def fewshot_folds(method: str) -> list[Path]:
    """The fold folders (relative to ``fewshot/<name>``) the table wants of a --fewshot method or the MHR rows."""
    from pointpeft.fewshot.mhr_protocol import ROW_NAMES
    from pointpeft.fewshot.table import column_name

    groups = [Path(mode) for mode in ROW_NAMES] if method == MHR_PROTOCOL else [Path()]
    return [g / column_name(w, s) / f"fold{k}" for g in groups for w, s in FEWSHOT_SETTINGS
            for k in range(FEWSHOT_FOLDS)]


def _seed_from_ledger(entry_root: Path, run_root: Path) -> None:
    """Copy the ledger's finished fold summaries into the run root, so the few-shot sweep skips those folds.
    MHR's multi-task inventories are left out: the ledger holds their summary but not their weights, and a copied
    summary would make the protocol skip training an inventory it then cannot load."""
    for entry in finished_entries(entry_root):
        rel = entry.relative_to(entry_root)
        if any(part.startswith("multitask_") for part in rel.parts):
            continue
        dst = run_root / rel
        if not (dst / "results.json").is_file():
            record_run(entry, dst)  # the same summary copy, in the other direction


def fewshot_argv(args: argparse.Namespace, method: str, root: Path, ckpt: str, budget: dict,
                 winners: dict[str, str], way: int, shot: int) -> list[str]:
    """tools/fewshot.py's command line for one method and setting: the CPU-sized recipe of the budget, the
    family's searched value, and for the MHR rows the CPU-sized multi-task phase."""
    key = (budget.get("search") or {}).get("key")
    argv = ["--config", str(REPO / "cfgs" / "fewshot" / f"{method}.yaml"), "--ckpt", ckpt, "--root", str(root),
            "--name", _fewshot_name(method), "--generate-from", "modelnet40", "--source-root", args.data_root,
            "--folds-root", str(root / "fewshot_episodes"), "--epochs", str(args.fewshot_epochs), "--quiet",
            "--way", str(way), "--shot", str(shot), "--folds", f"0-{FEWSHOT_FOLDS - 1}",
            f"model.type={args.backbone}", f"scheduler.warmup_epochs={args.warmup_epochs}", "train.progress=off",
            f"train.amp={run_precision(budget, args)}"]
    if method == MHR_PROTOCOL:  # overrides first: argparse takes the positional overrides as one run
        return [*argv, f"fewshot.mhr.epochs={args.mhr_epochs}", f"fewshot.mhr.train_per_class={args.mhr_per_class}",
                "--protocol", "mhr"]
    if family(method) in winners:
        argv.append(f"{key}={winners[family(method)]}")
    return argv


def run_fewshot(args: argparse.Namespace, root: Path, ledger: Path | None, ckpt: str,
                budget: dict) -> None:
    """Every --fewshot method's folds (``FEWSHOT_SETTINGS`` x ``FEWSHOT_FOLDS``), then the MHR protocol rows
    (unless --skip-mhr); each method's finished folds enter the ledger. A method whose folds are all in the ledger
    is skipped (so a fresh clone does not retrain MHR's inventories for nothing)."""
    from pointpeft.fewshot.cli import main as fewshot_main

    winners = search_winners(ledger or root, budget) if args.use_search else {}
    for method in fewshot_steps(args):
        name = _fewshot_name(method)
        run_dir, entry = root / "fewshot" / name, (ledger / "fewshot" / name if ledger else None)
        if entry is not None:
            if all(is_finished(entry / rel) for rel in fewshot_folds(method)):
                log.info("few-shot %s: every fold is in the ledger; skipped", name)
                continue
            _seed_from_ledger(entry, run_dir)
        for way, shot in FEWSHOT_SETTINGS:
            rc = fewshot_main(fewshot_argv(args, method, root, ckpt, budget, winners, way, shot))
            if entry is not None:  # after each setting, and when one stops early (Ctrl-C, kill, a failed fold):
                n = len(record_tree(run_dir, entry, skip=_changed_inventories(run_dir, entry)))  # keep what finished
                log.info("recorded %d few-shot runs of %s in the ledger (commit them)", n, name)
            if rc != 0:
                raise SystemExit(f"sweep: few-shot {name} {way}-way {shot}-shot failed with exit code {rc}"
                                 + ("; its finished folds are in the ledger" if entry is not None else ""))


def _changed_inventories(run_dir: Path, entry: Path) -> list[str]:
    """MHR inventories trained again in this sitting (the ledger keeps no weights) whose epochs differ from the
    summary the ledger recorded: the ledger keeps the first summary, and a warning says that the rows now mix
    folds adapted from two trainings (another CPU kind can round differently). Names relative to ``run_dir``."""
    def epochs(d: Path) -> list[dict]:
        res = json.loads((d / "results.json").read_text())
        return [{k: v for k, v in e.items() if k != "time_s"} for e in res.get("history") or []]

    changed = []
    for d in sorted(entry.glob("multitask_*")):
        mine = run_dir / d.name
        if is_finished(d) and is_finished(mine) and epochs(d) != epochs(mine):
            changed.append(d.name)
            log.warning("%s: the inventory trained in this sitting differs from the one the ledger recorded; the "
                        "ledger keeps the recorded summary, and this sitting's folds adapted from the new one "
                        "(compare %s with %s)", d.name, mine / "results.json", d / "results.json")
    return changed


def print_fewshot_plan(args: argparse.Namespace, table_root: Path) -> None:
    """--plan for the few-shot step: folds finished and left per method and setting, with an estimate from the
    ledger's finished folds of that setting (any method; the main table's s/epoch scaled when there are none).
    MHR's rows add their multi-task inventories, which a fresh clone trains again (the ledger keeps no weights)."""
    per_epoch, fold_minutes = epoch_minutes(table_root), finished_fold_minutes(table_root)
    left_min, left_n, inventories = 0.0, 0, "none needed"
    for method in fewshot_steps(args):
        entry = table_root / "fewshot" / _fewshot_name(method)
        by_setting: dict[str, list[Path]] = {}
        for rel in fewshot_folds(method):
            by_setting.setdefault(str(rel.parent), []).append(rel)
        for setting, rels in by_setting.items():
            todo = [r for r in rels if not is_finished(entry / r)]
            fold_min = _fold_minutes(Path(setting).name, method, per_epoch, fold_minutes, args.fewshot_epochs)
            left_min += fold_min * len(todo)
            left_n += len(todo)
            print(f"{'finished' if not todo else 'to run':12s} fewshot/{_fewshot_name(method)}/{setting:40s} "
                  f"{len(rels) - len(todo)}/{len(rels)} folds  {f'~{fold_min * len(todo):.0f} min' if todo else ''}")
        if method == MHR_PROTOCOL and any(not is_finished(entry / r) for r in fewshot_folds(method)):
            recorded = inventory_minutes(entry)
            left_min += recorded or 0.0
            inventories = (f"MHR's multi-task inventories ~{recorded:.0f} min, as the ledger recorded them" if recorded
                           else "MHR's two multi-task inventories not counted: none recorded yet")
    print(f"{left_n} few-shot folds left, ~{left_min / 60:.1f} h of this machine ({inventories})")


def inventory_minutes(entry: Path) -> float | None:
    """Minutes the MHR protocol's recorded multi-task inventories took together (their ``results.json`` in the
    ledger), or None when none is recorded."""
    times = [json.loads((d / "results.json").read_text()).get("elapsed_s") or 0.0
             for d in sorted(entry.glob("multitask_*")) if is_finished(d)]
    return sum(times) / 60 if times else None


def finished_fold_minutes(table_root: Path) -> dict[str, float]:
    """{setting (e.g. ``5w10s``): median minutes of the ledger's finished few-shot folds of it, any method}, read
    in one pass over the ledger's fold folders."""
    times: dict[str, list[float]] = {}
    for d in (table_root / "fewshot").glob("**/fold*"):
        if is_finished(d):
            t = json.loads((d / "results.json").read_text()).get("elapsed_s")
            if t:
                times.setdefault(d.parent.name, []).append(t / 60)
    return {setting: statistics.median(ts) for setting, ts in times.items()}


def _fold_minutes(setting: str, method: str, per_epoch: dict[str, float], fold_minutes: dict[str, float],
                  epochs: int) -> float:
    """Median minutes of a finished fold of ``setting`` in the ledger, else the method's main-table epoch time
    scaled to the setting's support and query clouds (a query cloud counted as a third of a training one)."""
    if setting in fold_minutes:
        return fold_minutes[setting]
    way, shot = (int(x) for x in setting[:-1].split("w"))
    base = epoch_estimate(method if method != MHR_PROTOCOL else "lora", per_epoch)
    return epochs * base * (way * shot + way * 20 / 3) / 2000


def fewshot_row_dirs(table_root: Path) -> list[tuple[str, Path, str | None]]:
    """(row name, fold folder root, protocol) of every few-shot row in the ledger: one per method folder, one per
    MHR protocol mode (``protocol: mhr``; their episodes are the held-out classes', not the other rows')."""
    from pointpeft.fewshot.mhr_protocol import ROW_NAMES

    base = table_root / "fewshot"
    out: list[tuple[str, Path, str | None]] = []
    for d in sorted(base.iterdir()) if base.is_dir() else ():
        if d.name == "mhr_protocol":
            out += [(label, d / mode, "mhr") for mode, label in ROW_NAMES.items() if (d / mode).is_dir()]
        elif d.is_dir():
            out.append((d.name, d, None))
    return out


def fewshot_rows(table_root: Path) -> list[dict]:
    """Few-shot rows rebuilt from the ledger's fold folders (mean ± std over folds, last epoch); MHR's protocol
    rows carry ``protocol: mhr``."""
    from pointpeft.fewshot.table import summarize_method

    rows = [summarize_method(d, name, extra={"protocol": protocol} if protocol else None)
            for name, d, protocol in fewshot_row_dirs(table_root)]
    return [r for r in rows if r["fewshot"]]


#: the row each group of few-shot rows is paired with, fold by fold: full fine-tuning for the methods (one
#: episodes folder), Poly for MHR's protocol rows (MHR's own baseline, on the held-out classes' episodes)
PAIRED_REFERENCE = {None: "full", "mhr": "Poly"}


def _paired_lines(rows: list[dict]) -> list[str]:
    """The paired tables of the few-shot section, one per group of rows that share their episodes."""
    from pointpeft.fewshot.table import format_paired_table, paired_differences

    out = []
    for protocol, reference in PAIRED_REFERENCE.items():
        diffs = paired_differences([r for r in rows if r.get("protocol") == protocol], reference, FEWSHOT_SETTINGS)
        if diffs:
            out += [format_paired_table(diffs, reference, FEWSHOT_SETTINGS), ""]
    if not out:
        return []
    return ["Paired over the same folds (every row of a group is tested on the same episodes): each row's per-fold "
            "accuracy minus the reference's, mean ± std in points, then the folds won / tied / lost. The spread "
            "of the cells above is mostly how hard an episode is, which pairing cancels.", "", *out]


def fewshot_recipes(table_root: Path) -> dict[str, str]:
    """{row: "lr X, warm-up W epoch(s)"} as its finished folds' own configs ran (not as the budget meant them):
    the lr is the family's searched one under --use-search, MHR's protocol rows keep their config's (MHR-z its
    own), and a row whose folds differ lists each value."""
    out: dict[str, str] = {}
    for name, d, _ in fewshot_row_dirs(table_root):
        seen: dict[str, None] = {}
        for fold in d.glob("*/fold*"):
            if is_finished(fold):
                cfg = json.loads((fold / "results.json").read_text()).get("config") or {}
                lr = (cfg.get("optimizer") or {}).get("lr")
                warm = (cfg.get("scheduler") or {}).get("warmup_epochs")
                seen[f"lr {lr:g}, warm-up {warm}" if isinstance(lr, (int, float)) else f"lr {lr}, warm-up {warm}"] = None
        if seen:
            out[name] = " / ".join(sorted(seen))
    return out


def _fewshot_section(table_root: Path, budget: dict) -> list[str]:
    from pointpeft.fewshot.table import format_table

    rows = fewshot_rows(table_root)
    if not rows:
        return []
    fs = budget.get("fewshot") or {}
    return ["## Few-shot ModelNet40 (from the same backbone)", "",
            f"N-way K-shot episodes generated from the ModelNet40 training split (20 queries per class from the test "
            f"split), {fs.get('epochs', '?')} epochs per fold (CPU-sized; the originals train 150), last-epoch query "
            "accuracy, mean ± std over the finished folds (the cell says how many). The MHR rows follow MHR's "
            "cross-task protocol (inventory trained on disjoint class subsets, adapted on held-out classes drawn "
            "among those with clouds enough for every setting); their episodes are the held-out classes', so they "
            "compare with Poly, not with the rows above. Its "
            f"multi-task phase is CPU-sized too: {fs.get('mhr_epochs', '?')} epochs on "
            f"{fs.get('mhr_per_class', '?')} training clouds per class (MHR trains 100 epochs on all).", "",
            "Recipe of each row, read from its folds' configs: "
            + "; ".join(f"{m}: {r}" for m, r in fewshot_recipes(table_root).items())
            + " (batch 32, AdamW, cosine schedule; the originals: lr 5e-4, 10 warm-up epochs of 150).", "",
            format_table(rows, settings=FEWSHOT_SETTINGS), "", *_paired_lines(rows)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "modelnet40_ply_hdf5_1024"))
    ap.add_argument("--root", default=None, help="where the run folders go (default experiments/sweep, or "
                    "experiments/<ledger name> with --ledger)")
    ap.add_argument("--ledger", default=None, help="committed tree of finished runs' summaries (results/NAME); "
                    "the table is built from it")
    ap.add_argument("--ckpt", default=None, help="pretrained backbone to fine-tune from (no pretraining then)")
    ap.add_argument("--backbone", default="point_mae_small")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--pretrain-per-class", type=int, default=60, help="pretraining clouds per class (0 = all)")
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs per run")
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=50, help="fine-tuning clouds per class (0 = all)")
    ap.add_argument("--test-per-class", type=int, default=15, help="test clouds per class (0 = the whole test set)")
    ap.add_argument("--val-per-class", type=int, default=10,
                    help="validation clouds per class for --search, carved from the training split")
    ap.add_argument("--amp", default="fp32", choices=AMP_MODES,
                    help="precision of every run (part of the budget: one ledger holds one precision; 'auto' would "
                    "make a row depend on the machine that ran it)")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seeds-for", nargs="*", default=["linear", "full", "adapterx", "dapt", "dapt_x"],
                    help="methods that get every seed in --more-seeds")
    ap.add_argument("--more-seeds", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--search", default=None, metavar="KEY=V1,V2,...",
                    help="recipe search on the validation split (one seed, --search-methods)")
    ap.add_argument("--search-methods", nargs="+", default=["linear", "adapterx", "full"])
    ap.add_argument("--use-search", action="store_true",
                    help="give each method its family's winner of the recorded search")
    ap.add_argument("--efficiency", type=int, nargs="+", default=None, metavar="N",
                    help="data-efficiency runs: --methods at N training clouds per class (seed 0)")
    ap.add_argument("--fewshot", nargs="+", default=None, metavar="METHOD",
                    help="few-shot step: these methods' folds, then the MHR protocol rows")
    ap.add_argument("--skip-mhr", action="store_true",
                    help="few-shot step without the MHR protocol rows (a later --fewshot invocation runs them)")
    ap.add_argument("--fewshot-epochs", type=int, default=30, help="epochs per few-shot fold (CPU-sized recipe)")
    ap.add_argument("--mhr-epochs", type=int, default=10,
                    help="epochs of MHR's multi-task inventory training (CPU-sized; MHR's recipe is 100)")
    ap.add_argument("--mhr-per-class", type=int, default=50,
                    help="training clouds per class of MHR's multi-task phase (CPU-sized; null = all in MHR)")
    ap.add_argument("--variant", help="name of an investigation: fine-tune --methods x --seeds with the --set "
                    "overrides from this root's pretrained backbone (runs go to ROOT/variants/NAME)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="the variant's fine-tuning overrides")
    ap.add_argument("--also", nargs="*", default=[], metavar="ROOT",
                    help="other sweep roots (another pretraining...) to list under the main table; remembered")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--plan", action="store_true", help="list finished and remaining runs with an estimate; run nothing")
    args = ap.parse_args(argv)
    if args.set and not args.variant:
        ap.error("--set needs --variant NAME (the main table keeps one recipe for every method)")
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set takes KEY=VALUE, got {bad}")
    if sum(map(bool, (args.search, args.variant, args.efficiency, args.fewshot))) > 1:
        ap.error("--search, --variant, --efficiency and --fewshot are separate steps: give one at a time")
    if args.skip_mhr and not args.fewshot:
        ap.error("--skip-mhr belongs to the few-shot step: give it with --fewshot")
    setup_logging()
    ledger = Path(args.ledger) if args.ledger else None
    root = Path(args.root) if args.root else (Path("experiments") / ledger.name if ledger else Path("experiments/sweep"))
    table_root = ledger or root
    budget = {k: getattr(args, k) for k in ("backbone", "pretrain_epochs", "pretrain_per_class", "epochs",
                                            "per_class", "test_per_class", "methods", "seeds", "seeds_for",
                                            "more_seeds", "also", "amp")}
    if args.ckpt:
        budget.update(ckpt=str(args.ckpt), ckpt_sha256=sha256(Path(args.ckpt)), pretrain_epochs=None,
                      pretrain_per_class=None)
    search = parse_search(args.search)
    if search or args.variant or args.efficiency or args.fewshot:  # a step of its own leaves the main table's lists alone
        budget.update(methods=[], seeds=[], seeds_for=[], more_seeds=[])
    if search:
        budget["search"] = {"key": search[0], "values": search[1], "methods": args.search_methods,
                            "val_per_class": args.val_per_class}
    if args.variant:
        budget["variants"] = {args.variant: {"set": args.set, "methods": args.methods, "seeds": args.seeds}}
    if args.efficiency:
        budget["efficiency"] = {"per_class": args.efficiency, "methods": args.methods}
    if args.fewshot:
        budget["fewshot"] = {"methods": args.fewshot, "epochs": args.fewshot_epochs, "mhr_epochs": args.mhr_epochs,
                             "mhr_per_class": args.mhr_per_class}
    if args.table_only:
        remember_also(table_root / "budget.json", args.also)
    elif args.plan:
        recorded = _read_budget(table_root / "budget.json")
        ckpt = str(args.ckpt or recorded.get("ckpt") or "pretrain.pth")
        if args.fewshot:
            print_fewshot_plan(args, table_root)
        else:
            print_plan(plan_runs(args, recorded or budget, table_root, ckpt, planning=True), root, table_root,
                       args.epochs)
        return 0
    else:
        record_budget(table_root / "budget.json", budget)
        if args.ckpt:
            ckpt = str(args.ckpt)
        else:
            pre_dir = root / "pretrain"
            pre = ["--config", str(REPO / "cfgs/pretrain/modelnet40.yaml"), f"model.arch={args.backbone}",
                   f"train.epochs={args.pretrain_epochs}", "data.batch_size=32", "data.num_workers=0",
                   "scheduler.warmup_epochs=1", "pretrain.probe=null", "train.progress=off",
                   *data_nodes(args.data_root, args.pretrain_per_class or None, 10)]
            _train(pre, pre_dir)
            ckpt = str(pre_dir / "pretrain.pth")
        if args.fewshot:
            run_fewshot(args, root, ledger, ckpt, _read_budget(table_root / "budget.json"))
        else:
            for p in plan_runs(args, _read_budget(table_root / "budget.json"), table_root, ckpt):
                _train(p.argv, root / p.rel, table_root / p.rel if ledger else None)
    write_table(table_root, Path(args.out), budget)
    return 0


def _read_budget(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


#: budget keys that must agree between sweep processes sharing a root; the others (method and seed lists) are merged
BUDGET_FIXED = ("backbone", "ckpt_sha256", "pretrain_epochs", "pretrain_per_class", "epochs", "per_class",
                "test_per_class", "amp")


def record_budget(path: Path, budget: dict) -> None:
    """Write the sweep's budget; a second process on the same root (other methods, in parallel) must use the same
    budget, and its methods and seeds are added to the record."""
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in BUDGET_FIXED if old.get(k) != budget.get(k)]
        if diff:
            raise SystemExit(f"sweep: {path} holds another budget ({', '.join(f'{k}: {old.get(k)} vs {budget.get(k)}' for k in diff)}); "
                             "use another --root")
        for k in ("methods", "seeds", "seeds_for", "more_seeds", "also"):
            budget[k] = list(dict.fromkeys([*old.get(k, []), *budget.get(k, [])]))
        variants = dict(old.get("variants", {}))
        for name, rec in budget.get("variants", {}).items():
            if name in variants and variants[name]["set"] != rec["set"]:
                raise SystemExit(f"sweep: {path} has variant {name!r} with --set {variants[name]['set']}, not "
                                 f"{rec['set']}; name the new one differently")
            old_rec = variants.get(name, {"methods": [], "seeds": []})
            variants[name] = {"set": rec["set"], **{k: list(dict.fromkeys([*old_rec[k], *rec[k]]))
                                                    for k in ("methods", "seeds")}}
        budget["variants"] = variants
        if old.get("fewshot") and budget.get("fewshot"):
            for k in ("epochs", "mhr_epochs", "mhr_per_class"):
                if old["fewshot"].get(k) != budget["fewshot"].get(k):
                    raise SystemExit(f"sweep: {path} records few-shot runs with {k} {old['fewshot'].get(k)}, not "
                                     f"{budget['fewshot'].get(k)}; use another --ledger")
            budget["fewshot"]["methods"] = list(dict.fromkeys([*old["fewshot"]["methods"],
                                                               *budget["fewshot"]["methods"]]))
        budget["fewshot"] = budget.get("fewshot") or old.get("fewshot")
        for step in ("search", "efficiency"):
            budget[step] = _merge_step(path, step, old.get(step), budget.get(step))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {k: v for k, v in budget.items() if v is not None or k in BUDGET_FIXED})


def _merge_step(path: Path, step: str, old: dict | None, new: dict | None) -> dict | None:
    """A search (one key, one validation size) or efficiency record grows by values and methods only."""
    if not old or not new:
        return old or new
    for k in ("key", "val_per_class"):
        if old.get(k) != new.get(k):
            raise SystemExit(f"sweep: {path} records a {step} with {k} {old.get(k)!r}, not {new.get(k)!r}; "
                             "use another --ledger")
    values_key = "values" if step == "search" else "per_class"
    return {**old, values_key: list(dict.fromkeys([*old[values_key], *new[values_key]])),
            "methods": list(dict.fromkeys([*old["methods"], *new["methods"]]))}


def remember_also(path: Path, roots: list[str]) -> None:
    """``--table-only --also ROOT``: add roots to the record so that later ``--table-only`` runs list them too."""
    if roots:
        budget = json.loads(path.read_text()) if path.is_file() else {}
        budget["also"] = list(dict.fromkeys([*budget.get("also", []), *roots]))
        atomic_write_json(path, budget)


def _finished_rows(folder: Path) -> list:
    """Table rows of the finished runs below ``folder`` (none when it does not exist yet)."""
    return collect([folder]) if folder.is_dir() else []


def _pretraining(budget: dict) -> str:
    if budget.get("ckpt"):
        return (f"`{budget.get('backbone')}` from `{budget['ckpt']}` (sha256 {str(budget.get('ckpt_sha256'))[:12]}…; "
                "see the README beside it for how it was pretrained)")
    return (f"`{budget.get('backbone')}` pretrained with Point-MAE on ModelNet40 training clouds "
            f"({budget.get('pretrain_per_class') or 'all'} per class, labels unused) for {budget.get('pretrain_epochs')} "
            "epochs")


def _rows_block(rows: list) -> str:
    if not rows:
        return "_no finished runs yet_\n"
    return (last_best_table(rows) + "\n"  # what each row is, from the runs' own config descriptions
            + "\n".join(f"- `{r.label}`: {r.runs[0].get('config', {}).get('description', '')}"
                        for r in sorted(rows, key=lambda r: r.trainable)) + "\n")


def _search_section(table_root: Path, budget: dict) -> list[str]:
    """The recipe search: validation accuracy (last epoch) per value and method, and each family's winner."""
    search = budget.get("search")
    if not search:
        return []
    rows = search_rows(table_root, budget)
    verdicts = family_verdicts(search, rows)
    methods = search["methods"]
    lines = ["", "## Recipe search (validation split carved from the training split)", "",
             f"`{search['key']}` searched over {', '.join(search['values'])} for {', '.join(methods)}, one seed, "
             f"the main table's budget; scored by the last-epoch accuracy on {search['val_per_class']} training "
             "clouds per class that the training subset does not hold (never the test split). One recipe per "
             f"family ({', '.join(SOLO_FAMILIES)}, and every PEFT method sharing the PEFT winner).", "",
             "| value | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for value in search["values"]:
        cells = [mean_std(rows[value][m].values("acc", "last")) if m in rows[value] else "—" for m in methods]
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    fams = sorted({family(m) for m in methods})
    def verdict(f: str) -> str:
        won, left = verdicts[f]
        if won is None:
            return f"{f} → (search unfinished)"
        return f"{f} → `{search['key']}={won}`" + (
            f" (peak bracketed; {', '.join(left)} not run: each lies beyond a value that already scored below "
            "the winner)" if left else "")

    lines += ["", "Winners: " + ", ".join(verdict(f) for f in fams) + ".", ""]
    return lines


def _efficiency_section(table_root: Path, budget: dict, out: Path, main_rows: list) -> list[str]:
    """Accuracy vs training clouds per class: the efficiency runs plus the main table's seed-0 rows."""
    eff = budget.get("efficiency")
    if not eff:
        return []
    points: dict[str, dict[int, tuple[float, float]]] = {}
    main = {r.label: r for r in main_rows}
    for n in sorted({*eff["per_class"], budget.get("per_class") or 0}):
        for method in eff["methods"]:
            if n == budget.get("per_class") and method in main:
                runs = [r for r in main[method].runs if r.get("seed", 0) == 0] or main[method].runs[:1]
                row = Row(method, runs)
            else:
                found = _finished_rows(table_root / "efficiency" / f"pc{n}" / method)
                if not found:
                    continue
                row = found[0]
            points.setdefault(method, {})[n] = (row.values("acc", "last")[0], row.values("acc")[0])
    sizes = sorted({n for p in points.values() for n in p})
    lines = ["## Data efficiency (seed 0)", "",
             "Last-epoch test accuracy (best epoch in brackets) against training clouds per class; the "
             f"{budget.get('per_class') or 'all'}/class column is the main table's seed-0 run. Every size trains "
             f"the budget's {budget.get('epochs', '?')} epochs, so a smaller set also gets proportionally fewer "
             "optimizer steps.", "",
             "| method | " + " | ".join(f"{n}/class" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for method, p in points.items():
        lines.append(f"| {method} | " + " | ".join(f"{p[n][0]:.2f} ({p[n][1]:.2f})" if n in p else "—"
                                                   for n in sizes) + " |")
    if points:
        from pointpeft.viz.plots import plot_accuracy_vs_clouds

        png = out.with_name("results_efficiency.png")
        plot_accuracy_vs_clouds({m: {n: v[0] for n, v in p.items()} for m, p in points.items()}, png,
                                title="ModelNet40: last-epoch accuracy vs training clouds per class")
        lines += ["", f"![accuracy vs training clouds]({png.name})"]
    return [*lines, ""]


def _investigations(root: Path, budget: dict) -> list[str]:
    """Sections for this root's variants (other fine-tuning overrides) and other roots (other pretrainings)."""
    out: list[str] = []
    for name, rec in budget.get("variants", {}).items():
        rows = _finished_rows(root / "variants" / name)
        for r in rows:  # a run made before it was filed under the variant has no exp_name saying so
            r.label = r.label if "@" in r.label else f"{r.label}@{name}"
        out += [f"### Variant `{name}`: {', '.join(f'`{kv}`' for kv in rec['set'])}", "",
                f"The same pretrained backbone and budget as the main table; fine-tuning overridden with "
                f"{', '.join(rec['set'])}; seeds {rec['seeds']}.", "", _rows_block(rows)]
    for other in budget.get("also", []):
        other_root = Path(other)
        ob = json.loads((other_root / "budget.json").read_text()) if (other_root / "budget.json").is_file() else {}
        rows = _finished_rows(other_root / "finetune")
        same = [k for k in ("epochs", "per_class", "test_per_class") if ob.get(k) == budget.get(k)]
        out += [f"### Another pretraining: `{other}`", "",
                f"Backbone: {_pretraining(ob)}. Fine-tuning: {ob.get('epochs')} epochs on "
                f"{ob.get('per_class') or 'all'} clouds per class, test on {ob.get('test_per_class') or 'all'} per "
                f"class ({'the same as the main table' if len(same) == 3 else 'differs from the main table'}); "
                f"seeds {ob.get('seeds')}"
                + (f", extra seeds {ob.get('more_seeds')} for {ob.get('seeds_for')}." if ob.get("seeds_for") else "."),
                "",
                _rows_block(rows)]
    return (["", "## Investigations", "",
             "What was changed to find out why a method falls short; each section says what differs from the "
             "main table. See docs/design-notes.md for the reading.", "", *out] if out else [])


def _distinct(rows: list, section: str, key: str) -> list[str]:
    """The sorted distinct values of ``results.json[section][key]`` over every run of the rows ('?' if absent)."""
    return sorted({str(run.get(section, {}).get(key, "?")) for r in rows for run in r.runs})


def write_table(root: Path, out: Path, budget: dict) -> None:
    """docs/results.md from the finished runs below ``root`` (the ledger when there is one)."""
    rows = _finished_rows(root / "finetune")
    budget_file = root / "budget.json"
    if budget_file.is_file():
        budget = json.loads(budget_file.read_text())
    modes, kinds = _distinct(rows, "amp", "mode"), _distinct(rows, "machine", "cpu_kind")
    amp = (modes[0] if len(modes) == 1 else f"MIXED ({', '.join(modes)}: rows are not comparable)") if rows else None
    kinds = ("rows ran on " if len(kinds) > 1 else "") + ", ".join(kinds)  # s/epoch compares only within one kind
    sizes = rows[0].runs[0].get("data_sizes", {}) if rows else {}
    done = {r.label for r in rows}
    missing = [m for m in budget.get("methods", []) if m not in done]
    head = [
        "# Results on the real ModelNet40 (CPU budget)",
        "",
        f"Generated by `python scripts/sweep.py --table-only` from the runs' `results.json` files in `{root}`; "
        "nothing typed by hand.",
        "",
        f"- Backbone: {_pretraining(budget)}.",
        f"- Fine-tuning: {budget.get('epochs')} epochs on {budget.get('per_class') or 'all'} training clouds per "
        f"class ({sizes.get('train', '?')} clouds); accuracy on "
        + ("the whole ModelNet40 test split in `../shared/data`" if not budget.get("test_per_class")
           else f"{budget.get('test_per_class')} test clouds per class of ModelNet40")
        + f" ({sizes.get('val', '?')} clouds; plain single view). The main number is the **last epoch**; the best "
        "epoch (the originals' choice, made on the test split) stands beside it.",
        (f"- Seeds: {budget.get('seeds')} for every method; extra seeds {budget.get('more_seeds')} planned for "
         f"{budget.get('seeds_for')} (the `seeds` column counts the runs that finished; mean ± sample std)."
         if budget.get("methods") else "- Seeds: the main table's runs have not started (`--plan` lists them)."),
        f"- Recipe: {_recipe_line(root, budget)}",
        f"- Hardware: {'; '.join(_distinct(rows, 'machine', 'cpu_model'))} ({kinds}), {', '.join(_distinct(rows, 'machine', 'cpu_affinity'))} cores, AMP {amp}. "
        "`s/epoch` is the median wall time of an epoch (training + evaluation) on a shared machine, comparable only "
        "between rows of one `cpu` kind: compare speeds with benchmarks/README.md, not with this column. `commit` is the commit each row ran on (`+`: with "
        "uncommitted changes in the tree).",
        "",
        *_archived_line(out),
        "This is a small-budget table, not the paper's protocol (300 epochs on the full set from the "
        "official Point-MAE weights): use `scripts/paper_tables.sh` on a GPU for that. The `trainable %` column is "
        "relative to the small backbone, where the classification head alone is several percent.",
        "",
        "",
    ]
    tail: list[str] = []
    if missing:
        tail += ["", f"Not run yet (the sweep resumes where it stopped): {', '.join(missing)}.", ""]
    if rows:
        from pointpeft.viz.plots import ParamPoint, plot_accuracy_vs_params

        pts = [ParamPoint(r.label, r.trainable, statistics.mean(r.values("acc", "last") or r.values("acc")),
                          float(r.runs[0]["params"]["total"])) for r in rows]
        png = out.with_name("results_params.png")
        plot_accuracy_vs_params(pts, png, title="ModelNet40 (CPU budget): last-epoch accuracy vs trainable parameters")
        tail += ["", f"![accuracy vs trainable parameters]({png.name})", ""]
        tail += _usage_section(rows, out)
    tail += _search_section(root, budget)
    tail += _efficiency_section(root, budget, out, rows)
    tail += _fewshot_section(root, budget)
    tail += _investigations(root, budget)
    atomic_write_text(out, "\n".join(head) + _rows_block(rows) + "\n".join(tail))
    log.info("wrote %s (%d methods)", out, len(rows))


def _usage_section(rows: list, out: Path) -> list[str]:
    """Adapter-X's learned expert usage per block (its seed-0 run's last evaluation), as a plot."""
    runs = [r for row in rows if row.label == "adapterx" for r in row.runs if r.get("expert_usage")]
    if not runs:
        return []
    import numpy as np

    from pointpeft.viz.plots import plot_expert_usage

    run = min(runs, key=lambda r: r.get("seed", 0))
    usage = np.asarray(run["expert_usage"], dtype=float)
    png = out.with_name("results_expert_usage.png")
    plot_expert_usage(usage, png, title=f"Adapter-X expert usage per block (trained, seed {run.get('seed', 0)})")
    used = (usage > 0.5 / usage.shape[1]).sum(axis=1)
    return [f"Adapter-X's routing after training (seed {run.get('seed', 0)}, share of sub-tokens per expert and "
            f"block on the test clouds): {int(used.min())}–{int(used.max())} of {usage.shape[1]} experts take at "
            "least half the balanced share in each block.", "", f"![expert usage]({png.name})", ""]


def _archived_line(out: Path) -> list[str]:
    """A pointer to the archived tables beside ``out`` (other backbones or code, kept as they were generated)."""
    old = sorted(out.parent.glob(f"{out.stem}-*.md"))
    if not old:
        return []
    return ["Earlier tables (another backbone, code before the changes in docs/parity.md), archived as they were: "
            + ", ".join(f"[{p.name}]({p.name})" for p in old) + ".", ""]


def _recipe_line(root: Path, budget: dict) -> str:
    search = budget.get("search")
    if not search:
        return "each method's shipped config (cfgs/finetune/modelnet40/<method>.yaml), epochs as above."
    winners = search_winners(root, budget)
    chosen = ", ".join(f"{f} {winners[f]}" for f in sorted(winners)) or "not yet, the search is unfinished"
    return ("each method's shipped config, with `" + search["key"] + "` chosen per family on the validation split "
            f"(see the recipe search below): {chosen}.")


if __name__ == "__main__":
    sys.exit(main())
