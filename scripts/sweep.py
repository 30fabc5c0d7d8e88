#!/usr/bin/env python
"""The real-data table (docs/results.md): pretrain the small backbone on ModelNet40's training clouds (labels
unused), fine-tune every method from it with one budget, and write the table and the accuracy-vs-parameters plot
from the runs' results.json files. Every step is resumable: finished runs are skipped, interrupted ones resumed.

    python scripts/sweep.py --data-root ../shared/data/modelnet40_ply_hdf5_1024            # run (background it)
    python scripts/sweep.py --table-only                                                   # rewrite the table

The budget (backbone, subset, epochs, seeds) is in the table's header; defaults fit a few hours of 2-core CPU.

Investigations go in the same file, below the main table, each with what it changes:

    python scripts/sweep.py --variant lr2e-3 --set optimizer.lr=2e-3 --methods adapterx   # same backbone, other recipe
    python scripts/sweep.py --root experiments/sweep-pretrain-all --pretrain-epochs 4 --pretrain-per-class 0 \
        --methods linear adapterx full --seeds-for --out /tmp/other.md                   # another pretraining
    python scripts/sweep.py --table-only --also experiments/sweep-pretrain-all            # list it under the main table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pointpeft.engine.launch import run as train_run
from pointpeft.engine.summary import collect, markdown_table
from pointpeft.utils.io import atomic_write_json, atomic_write_text
from pointpeft.utils.misc import get_logger, setup_logging

log = get_logger("sweep")
REPO = Path(__file__).resolve().parents[1]
METHODS = ["linear", "adapterx", "adapterx_per_block", "full", "dapt", "idpt", "vpt_deep", "lora", "adaptformer", "mosa", "mhr"]


def _status(run_dir: Path) -> str:
    f = run_dir / "results.json"
    if not f.is_file():
        return "absent"
    return json.loads(f.read_text()).get("status", "running")


def _train(argv: list[str], run_dir: Path) -> None:
    status = _status(run_dir)
    if status == "finished":
        log.info("done already: %s", run_dir)
        return
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


def data_nodes(root: str, per_class: int | None, test_per_class: int | None) -> list[str]:
    train = f"{{type: modelnet40, root: {root}, split: train, npoints: 1024, transforms: [{{type: scale_translate}}]}}"
    test = f"{{type: modelnet40, root: {root}, split: test, npoints: 1024}}"
    if per_class:
        train = f"{{type: subset, per_class: {per_class}, seed: 0, dataset: {train}}}"
    if test_per_class:
        test = f"{{type: subset, per_class: {test_per_class}, seed: 0, dataset: {test}}}"
    return [f"data.train={train}", f"data.val={test}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "modelnet40_ply_hdf5_1024"))
    ap.add_argument("--root", default="experiments/sweep", help="where the sweep's run folders go")
    ap.add_argument("--backbone", default="point_mae_small")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--pretrain-per-class", type=int, default=60, help="pretraining clouds per class (0 = all)")
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs per run")
    ap.add_argument("--per-class", type=int, default=50, help="fine-tuning clouds per class (0 = all)")
    ap.add_argument("--test-per-class", type=int, default=15, help="test clouds per class (0 = the whole test set)")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seeds-for", nargs="*", default=["adapterx", "full", "dapt"],
                    help="methods that get every seed in --more-seeds")
    ap.add_argument("--more-seeds", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--variant", help="name of an investigation: fine-tune --methods x --seeds with the --set "
                    "overrides from this root's pretrained backbone (runs go to ROOT/variants/NAME)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="the variant's fine-tuning overrides")
    ap.add_argument("--also", nargs="*", default=[], metavar="ROOT",
                    help="other sweep roots (another pretraining...) to list under the main table; remembered")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    if args.set and not args.variant:
        ap.error("--set needs --variant NAME (the main table keeps one recipe for every method)")
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set takes KEY=VALUE, got {bad}")
    setup_logging()
    root = Path(args.root)
    budget = {k: getattr(args, k) for k in ("backbone", "pretrain_epochs", "pretrain_per_class", "epochs",
                                            "per_class", "test_per_class", "methods", "seeds", "seeds_for",
                                            "more_seeds", "also")}
    if args.variant:  # a variant adds its own record and leaves the main table's method list alone
        budget.update(methods=[], seeds=[], seeds_for=[], more_seeds=[],
                      variants={args.variant: {"set": args.set, "methods": args.methods, "seeds": args.seeds}})
    if args.table_only:
        remember_also(root / "budget.json", args.also)
    else:
        record_budget(root / "budget.json", budget)
        pre_dir = root / "pretrain"
        pre = ["--config", str(REPO / "cfgs/pretrain/modelnet40.yaml"), f"model.arch={args.backbone}",
               f"train.epochs={args.pretrain_epochs}", "data.batch_size=32", "data.num_workers=0",
               "scheduler.warmup_epochs=1", "pretrain.probe=null", "train.progress=off",
               *data_nodes(args.data_root, args.pretrain_per_class or None, 10)]
        _train(pre, pre_dir)
        ckpt = pre_dir / "pretrain.pth"
        if args.variant:
            plan = [(args.seeds, args.methods)]
            runs_dir = root / "variants" / args.variant
        else:
            plan = [(args.seeds, args.methods), (args.more_seeds, [m for m in args.methods if m in args.seeds_for])]
            runs_dir = root / "finetune"
        for seed_list, methods in plan:
            for seed in seed_list:
                for method in methods:
                    cfg = REPO / "cfgs" / "finetune" / "modelnet40" / f"{method}.yaml"
                    ft = ["--config", str(cfg), "--ckpt", str(ckpt), "--seed", str(seed),
                          f"model.type={args.backbone}", f"train.epochs={args.epochs}", "scheduler.warmup_epochs=1",
                          "train.progress=off", *data_nodes(args.data_root, args.per_class or None,
                                                           args.test_per_class or None)]
                    if args.variant:
                        ft += [*args.set, f"exp_name={method}@{args.variant}"]
                    _train(ft, runs_dir / method / f"seed{seed}")
    write_table(root, Path(args.out), budget)
    return 0


#: budget keys that must agree between sweep processes sharing a root; the others (method and seed lists) are merged
BUDGET_FIXED = ("backbone", "pretrain_epochs", "pretrain_per_class", "epochs", "per_class", "test_per_class")


def record_budget(path: Path, budget: dict) -> None:
    """Write the sweep's budget; a second process on the same root (other methods, in parallel) must use the same
    budget, and its methods and seeds are added to the record."""
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in BUDGET_FIXED if old.get(k) != budget.get(k)]
        if diff:
            raise SystemExit(f"sweep: {path} holds another budget ({', '.join(f'{k}: {old.get(k)} vs {budget[k]}' for k in diff)}); "
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
    atomic_write_json(path, budget)


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
    return (f"`{budget.get('backbone')}` pretrained with Point-MAE on ModelNet40 training clouds "
            f"({budget.get('pretrain_per_class') or 'all'} per class, labels unused) for {budget.get('pretrain_epochs')} "
            "epochs")


def _rows_block(rows: list) -> str:
    if not rows:
        return "_no finished runs yet_\n"
    return (markdown_table(rows) + "\n"  # what each row is, from the runs' own config descriptions
            + "\n".join(f"- `{r.label}`: {r.runs[0].get('config', {}).get('description', '')}"
                        for r in sorted(rows, key=lambda r: r.trainable)) + "\n")


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


def write_table(root: Path, out: Path, budget: dict) -> None:
    rows = _finished_rows(root / "finetune")
    budget_file = root / "budget.json"
    if budget_file.is_file():
        budget = json.loads(budget_file.read_text())
    machine = rows[0].runs[0].get("machine", {}) if rows else {}
    amp = rows[0].runs[0].get("amp", {}).get("mode") if rows else None
    sizes = rows[0].runs[0].get("data_sizes", {}) if rows else {}
    done = {r.label for r in rows}
    missing = [m for m in budget.get("methods", []) if m not in done]
    head = [
        "# Results on the real ModelNet40 (CPU budget)",
        "",
        "Generated by `python scripts/sweep.py` from the runs' `results.json` files; nothing typed by hand.",
        "",
        f"- Backbone: {_pretraining(budget)}.",
        f"- Fine-tuning: {budget.get('epochs')} epochs on {budget.get('per_class') or 'all'} training clouds per "
        f"class ({sizes.get('train', '?')} clouds); accuracy on "
        + ("the whole ModelNet40 test split" if not budget.get("test_per_class")
           else f"{budget.get('test_per_class')} test clouds per class of ModelNet40")
        + f" ({sizes.get('val', '?')} clouds; plain single view, best epoch).",
        f"- Seeds: {budget.get('seeds')} for every method; extra seeds {budget.get('more_seeds')} planned for "
        f"{budget.get('seeds_for')} (the `seeds` column counts the runs that finished; mean ± sample std).",
        f"- Hardware: {machine.get('cpu_model', '?')}, {machine.get('cpu_affinity', '?')} cores, AMP {amp}. "
        "`s/epoch` is the median wall time of an epoch (training + evaluation) on a shared machine, with two to "
        "seven sweep processes running at once: compare speeds with benchmarks/README.md, not with this column.",
        "",
        "This is a small-budget sanity table, not the paper's protocol (300 epochs on the full set from the "
        "official Point-MAE weights): use `scripts/paper_tables.sh` on a GPU for that. The `trainable %` column is "
        "relative to the small backbone, where the classification head alone is several percent.",
        "",
        "",
    ]
    tail: list[str] = []
    if missing:
        tail += ["", f"Not run yet (the sweep resumes where it stopped): {', '.join(missing)}.", ""]
    if rows:
        import statistics

        from pointpeft.viz.plots import ParamPoint, plot_accuracy_vs_params

        pts = [ParamPoint(r.label, r.trainable, statistics.mean(r.values("acc")),
                          float(r.runs[0]["params"]["total"])) for r in rows]
        png = out.with_name("results_params.png")
        plot_accuracy_vs_params(pts, png, title="ModelNet40 (CPU budget): accuracy vs trainable parameters")
        tail += ["", f"![accuracy vs trainable parameters]({png.name})", ""]
    tail += _investigations(root, budget)
    atomic_write_text(out, "\n".join(head) + _rows_block(rows) + "\n".join(tail))
    log.info("wrote %s (%d methods)", out, len(rows))


if __name__ == "__main__":
    sys.exit(main())
