#!/usr/bin/env python
"""The real-data table (docs/results.md): pretrain the small backbone on ModelNet40's training clouds (labels
unused), fine-tune every method from it with one budget, and write the table and the accuracy-vs-parameters plot
from the runs' results.json files. Every step is resumable: finished runs are skipped, interrupted ones resumed.

    python tools/sweep.py --data-root ../shared/data/modelnet40_ply_hdf5_1024            # run (background it)
    python tools/sweep.py --table-only                                                   # rewrite the table

The budget (backbone, subset, epochs, seeds) is in the table's header; defaults fit a few hours of 2-core CPU.
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
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    setup_logging()
    root = Path(args.root)
    budget = {k: getattr(args, k) for k in ("backbone", "pretrain_epochs", "pretrain_per_class", "epochs",
                                            "per_class", "test_per_class", "methods", "seeds", "seeds_for",
                                            "more_seeds")}
    if not args.table_only:
        record_budget(root / "budget.json", budget)
        pre_dir = root / "pretrain"
        pre = ["--config", str(REPO / "cfgs/pretrain/modelnet40.yaml"), f"model.arch={args.backbone}",
               f"train.epochs={args.pretrain_epochs}", "data.batch_size=32", "data.num_workers=0",
               "scheduler.warmup_epochs=1", "pretrain.probe=null", "train.progress=off",
               *data_nodes(args.data_root, args.pretrain_per_class or None, 10)]
        _train(pre, pre_dir)
        ckpt = pre_dir / "pretrain.pth"
        for seed_list, methods in ((args.seeds, args.methods),
                                   (args.more_seeds, [m for m in args.methods if m in args.seeds_for])):
            for seed in seed_list:
                for method in methods:
                    cfg = REPO / "cfgs" / "finetune" / "modelnet40" / f"{method}.yaml"
                    ft = ["--config", str(cfg), "--ckpt", str(ckpt), "--seed", str(seed),
                          f"model.type={args.backbone}", f"train.epochs={args.epochs}", "scheduler.warmup_epochs=1",
                          "train.progress=off", *data_nodes(args.data_root, args.per_class or None,
                                                           args.test_per_class or None)]
                    _train(ft, root / "finetune" / method / f"seed{seed}")
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
        for k in ("methods", "seeds", "seeds_for", "more_seeds"):
            budget[k] = list(dict.fromkeys([*old.get(k, []), *budget[k]]))
    atomic_write_json(path, budget)


def write_table(root: Path, out: Path, budget: dict) -> None:
    rows = collect([root / "finetune"]) if (root / "finetune").is_dir() else []
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
        "Generated by `python tools/sweep.py` from the runs' `results.json` files; nothing typed by hand.",
        "",
        f"- Backbone: `{budget.get('backbone')}` pretrained with Point-MAE on ModelNet40 training clouds "
        f"({budget.get('pretrain_per_class') or 'all'} per class, labels unused) for "
        f"{budget.get('pretrain_epochs')} epochs.",
        f"- Fine-tuning: {budget.get('epochs')} epochs on {budget.get('per_class') or 'all'} training clouds per "
        f"class ({sizes.get('train', '?')} clouds); accuracy on "
        + ("the whole ModelNet40 test split" if not budget.get("test_per_class")
           else f"{budget.get('test_per_class')} test clouds per class of ModelNet40")
        + f" ({sizes.get('val', '?')} clouds; plain single view, best epoch).",
        f"- Seeds: {budget.get('seeds')} for every method; extra seeds {budget.get('more_seeds')} planned for "
        f"{budget.get('seeds_for')} (the `seeds` column counts the runs that finished).",
        f"- Hardware: {machine.get('cpu_model', '?')}, {machine.get('cpu_affinity', '?')} cores, AMP {amp}. "
        "`s/epoch` is the median wall time of an epoch (training + evaluation) on a shared machine, often with two "
        "sweep processes running: compare speeds with benchmarks/README.md, not with this column.",
        "",
        "This is a small-budget sanity table, not the paper's protocol (300 epochs on the full set from the "
        "official Point-MAE weights): use `scripts/paper_tables.sh` on a GPU for that.",
        "",
        "",
    ]
    body = markdown_table(rows) if rows else "_no finished runs yet_\n"
    if rows:  # what each row is, from the runs' own config descriptions
        body += "\n" + "\n".join(f"- `{r.label}`: {r.runs[0].get('config', {}).get('description', '')}"
                                  for r in sorted(rows, key=lambda r: r.trainable)) + "\n"
    tail = ["", "Reading it: the backbone here was pretrained for 3 short epochs on 2,400 clouds, so its frozen features "
            "are weak, and methods that train the backbone (full fine-tuning) gain most from the 15 epochs. The "
            "paper's claim (Adapter-X >= full fine-tuning at ~2% of the parameters) is about the released Point-MAE "
            "weights; with our synthetic-pretrained demo backbone on ModelNet40 (README, `make demo DATA=modelnet40`) "
            "Adapter-X did come out ahead of full fine-tuning. A longer pretraining is the first thing to change "
            "when more CPU time is available (`--pretrain-epochs`, `--pretrain-per-class 0`).", ""]
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
    atomic_write_text(out, "\n".join(head) + body + "\n".join(tail))
    log.info("wrote %s (%d methods)", out, len(rows))


if __name__ == "__main__":
    sys.exit(main())
