"""The results ledger (pointpeft.engine.ledger) and the sweep's honest recipe search: finished entries are never
rerun, only summaries enter the ledger, the validation split comes from the training split and never overlaps the
training subset or the test split, and the search's winners are computed from the ledger per family."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers.scripts import load_script

from pointpeft.data import build_dataset
from pointpeft.engine.ledger import entry_status, finished_entries, is_finished, record_run, record_tree
from pointpeft.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    return load_script("scripts/sweep.py")


def _results(acc_last: float, status: str = "finished", method: str = "adapterx", time_s: float = 60.0) -> dict:
    return {"status": status, "task": "classification", "config": {"peft": {"type": method}},
            "git_commit": "0123456789abcdef", "params": {"trainable": 10, "total": 100, "percent": 10.0},
            "best": {"epoch": 2, "acc": acc_last + 1, "mean_class_acc": acc_last},
            "last": {"epoch": 3, "val_acc": acc_last, "val_mean_class_acc": acc_last - 1},  # the trainer's last row
            "history": [{"epoch": 1, "time_s": time_s}]}


def _run_dir(path: Path, **kw) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(_results(**kw)))
    (path / "config.yaml").write_text("peft: {type: adapterx}\n")
    (path / "ckpt-last.pth").write_bytes(b"weights")
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter.safetensors").write_bytes(b"weights")
    return path


def test_record_run_keeps_summaries_only_and_refuses_unfinished(tmp_path):
    run = _run_dir(tmp_path / "runs" / "a", acc_last=50.0)
    entry = record_run(run, tmp_path / "ledger" / "a")
    assert sorted(p.name for p in entry.iterdir()) == ["config.yaml", "results.json"]
    assert is_finished(entry) and entry_status(tmp_path / "ledger" / "b") == "absent"
    unfinished = _run_dir(tmp_path / "runs" / "b", acc_last=1.0, status="running")
    with pytest.raises(DataError, match="does not say finished"):
        record_run(unfinished, tmp_path / "ledger" / "b")
    assert not (tmp_path / "ledger" / "b").exists()


def test_record_run_refuses_a_file_too_large_for_a_summary(tmp_path):
    run = _run_dir(tmp_path / "runs" / "a", acc_last=50.0)
    (run / "test.json").write_text("x" * (2 * 1024 * 1024 + 1))
    with pytest.raises(DataError, match="test.json.*too large"):
        record_run(run, tmp_path / "ledger" / "a")


def test_record_tree_and_finished_entries(tmp_path):
    _run_dir(tmp_path / "runs" / "5w10s" / "fold0", acc_last=80.0)
    _run_dir(tmp_path / "runs" / "5w10s" / "fold1", acc_last=1.0, status="interrupted")
    recorded = record_tree(tmp_path / "runs", tmp_path / "ledger")
    assert recorded == [tmp_path / "ledger" / "5w10s" / "fold0"]
    assert list(finished_entries(tmp_path / "ledger")) == recorded


def test_a_finished_ledger_entry_is_never_rerun(sweep, tmp_path, monkeypatch):
    entry = _run_dir(tmp_path / "ledger" / "finetune" / "linear" / "seed0", acc_last=40.0)
    monkeypatch.setattr(sweep, "train_run", lambda argv: pytest.fail(f"ran {argv}"))
    sweep._train(["--config", "x"], tmp_path / "runs" / "finetune" / "linear" / "seed0", entry)
    # a finished run folder not yet in the ledger is recorded without training again
    run = _run_dir(tmp_path / "runs" / "finetune" / "full" / "seed0", acc_last=70.0)
    sweep._train(["--config", "x"], run, tmp_path / "ledger" / "finetune" / "full" / "seed0")
    assert json.loads((tmp_path / "ledger/finetune/full/seed0/results.json").read_text())["last"]["val_acc"] == 70.0


def _labels(node: str) -> np.ndarray:
    return np.asarray(build_dataset(json.loads(node.split("=", 1)[1])).indices)


def test_validation_split_is_carved_from_training_clouds_the_subset_does_not_hold(sweep, modelnet_h5_root):
    leaf = REPO / "cfgs" / "finetune" / "modelnet40" / "adapterx.yaml"
    train, val = sweep.data_nodes(str(modelnet_h5_root), 5, None, 3, leaf=leaf)
    train_node, val_node = json.loads(train.split("=", 1)[1]), json.loads(val.split("=", 1)[1])
    assert val_node["dataset"]["split"] == "train" and val_node["skip"] == 5 and val_node["per_class"] == 3
    assert "transforms" not in val_node["dataset"]  # evaluation reads clouds plainly
    tr, va = build_dataset(train_node), build_dataset(val_node)
    assert len(tr) == 40 * 5 and len(va) == 40 * 3
    assert not set(tr.indices.tolist()) & set(va.indices.tolist())  # same base split, disjoint rows
    assert tr.base.split == va.base.split == "train"
    # the recipe's own training node (its transforms, resampling) is kept, only root and subset change
    recipe_train = sweep.load_config(leaf)["data"]["train"]
    assert {k: v for k, v in train_node["dataset"].items() if k != "root"} == \
        {k: v for k, v in recipe_train.items() if k != "root"}


def test_validation_split_needs_a_training_subset(sweep):
    with pytest.raises(SystemExit, match="needs a training subset"):
        sweep.data_nodes("root", None, None, 3)


def _search_ledger(root: Path, scores: dict[str, dict[str, float]]) -> None:
    for value, by_method in scores.items():
        for method, acc in by_method.items():
            d = root / "search" / f"optimizer.lr={value}" / method / "seed0"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps(_results(acc, method=method)))


def test_search_winners_per_family_from_the_ledger(sweep, tmp_path):
    budget = {"search": {"key": "optimizer.lr", "values": ["1e-3", "2e-3"],
                         "methods": ["linear", "adapterx", "lora"], "val_per_class": 10}}
    _search_ledger(tmp_path, {"1e-3": {"linear": 50.0, "adapterx": 70.0, "lora": 60.0},
                              "2e-3": {"linear": 55.0, "adapterx": 66.0}})
    assert sweep.search_winners(tmp_path, budget) == {"linear": "2e-3"}  # the PEFT family is unfinished at 2e-3
    _search_ledger(tmp_path, {"2e-3": {"lora": 68.0}})
    # PEFT: mean over adapterx and lora of the last-epoch validation accuracy: 65 at 1e-3, 67 at 2e-3
    assert sweep.search_winners(tmp_path, budget) == {"linear": "2e-3", "peft": "2e-3"}
    lines = "\n".join(sweep._search_section(tmp_path, budget))
    assert "| 1e-3 | 50.00 | 70.00 | 60.00 |" in lines and "peft → `optimizer.lr=2e-3`" in lines


def test_a_partial_search_names_a_winner_only_once_its_peak_is_bracketed(sweep, tmp_path):
    grid = ["5e-4", "1e-3", "2e-3", "4e-3", "8e-3"]
    win = sweep.bracketed_winner
    assert win(grid, {}) is None
    assert win(grid, {"5e-4": 70.0, "1e-3": 72.0}) is None             # rising at the edge of what ran
    assert win(grid, {"5e-4": 70.0, "1e-3": 72.0, "2e-3": 71.0}) == "1e-3"  # fell on the far side: bracketed
    assert win(grid, {"1e-3": 72.0, "2e-3": 71.0}) is None             # might still rise below 1e-3
    assert win(grid, {"5e-4": 70.0, "2e-3": 71.0, "4e-3": 69.0}) is None  # a hole in the stretch
    assert win(grid, {"4e-3": 60.0, "8e-3": 65.0}) == "8e-3"           # the grid's own end needs no bracket
    assert win(grid, dict(zip(grid, [1.0, 2.0, 3.0, 4.0, 5.0]))) == "8e-3"
    budget = {"search": {"key": "optimizer.lr", "values": grid, "methods": ["linear", "full"], "val_per_class": 10}}
    _search_ledger(tmp_path, {"5e-4": {"linear": 60.0, "full": 75.5}, "1e-3": {"linear": 61.0, "full": 76.25},
                              "2e-3": {"linear": 62.0, "full": 76.0}})
    assert sweep.search_winners(tmp_path, budget) == {"full": "1e-3"}   # linear still rising: no winner yet
    verdicts = sweep.family_verdicts(budget["search"], sweep.search_rows(tmp_path, budget))
    assert verdicts == {"full": ("1e-3", ["4e-3", "8e-3"]), "linear": (None, ["4e-3", "8e-3"])}
    lines = "\n".join(sweep._search_section(tmp_path, budget))
    assert "full → `optimizer.lr=1e-3` (peak bracketed; 4e-3, 8e-3 not run" in lines
    assert "linear → (search unfinished)" in lines


def test_use_search_gives_each_family_its_winner_and_refuses_without_one(sweep, tmp_path):
    budget = {"search": {"key": "optimizer.lr", "values": ["1e-3", "2e-3"], "methods": ["linear", "adapterx"],
                         "val_per_class": 10}}
    _search_ledger(tmp_path, {"1e-3": {"linear": 50.0, "adapterx": 70.0}, "2e-3": {"linear": 55.0, "adapterx": 60.0}})
    args = sweep.argparse.Namespace(search=None, use_search=True, variant=None, efficiency=None,
                                    methods=["linear", "dapt", "full"], seeds=[0], more_seeds=[], seeds_for=[],
                                    per_class=5, test_per_class=0, val_per_class=10, backbone="point_mae_small",
                                    epochs=2, warmup_epochs=1, data_root="root", set=[], amp="bf16")
    with pytest.raises(SystemExit, match="full family"):
        sweep.plan_runs(args, budget, tmp_path, "ckpt.pth")
    runs = sweep.plan_runs(args, budget, tmp_path, "ckpt.pth", planning=True)
    lr = {p.method: [a for a in p.argv if a.startswith("optimizer.lr=")] for p in runs}
    assert lr == {"linear": ["optimizer.lr=2e-3"], "dapt": ["optimizer.lr=1e-3"],
                  "full": ["optimizer.lr=<search pending>"]}
    assert all(p.rel.parts[0] == "finetune" for p in runs)
    # the precision is the budget's: a ledger's own record wins over this invocation's --amp
    assert all("train.amp=bf16" in p.argv for p in runs)
    assert all("train.amp=fp32" in p.argv for p in sweep.plan_runs(args, {**budget, "amp": "fp32"}, tmp_path,
                                                                      "ckpt.pth", planning=True))


def test_a_ledger_holds_one_precision(sweep, tmp_path):
    path = tmp_path / "budget.json"
    base = {"backbone": "point_mae_small", "epochs": 2, "per_class": 5, "test_per_class": 0, "methods": ["linear"],
            "seeds": [0], "seeds_for": [], "more_seeds": [], "also": []}
    sweep.record_budget(path, {**base, "amp": "fp32"})
    with pytest.raises(SystemExit, match="amp: fp32 vs bf16"):
        sweep.record_budget(path, {**base, "amp": "bf16"})
    assert json.loads(path.read_text())["amp"] == "fp32"  # the refused sweep wrote nothing


def test_the_table_says_when_its_rows_ran_at_different_precisions_or_cpu_kinds(sweep, tmp_path):
    for method, mode, kind, model in (("linear", "fp32", "amd-avx2", "AMD EPYC"),
                                      ("adapterx", "bf16", "intel-amx", "Intel Xeon")):
        d = tmp_path / "finetune" / method / "seed0"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({**_results(60.0, method=method), "amp": {"mode": mode},
                                                    "machine": {"cpu_model": model, "cpu_kind": kind}}))
    out = tmp_path / "results.md"
    sweep.write_table(tmp_path, out, {"methods": ["linear", "adapterx"], "epochs": 3, "per_class": 5,
                                      "test_per_class": 0})
    text = out.read_text()
    assert "AMP MIXED (bf16, fp32: rows are not comparable)" in text
    assert "Hardware: AMD EPYC; Intel Xeon (rows ran on amd-avx2, intel-amx)" in text  # every row's CPU, not the first's
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| linear") or
            line.startswith("| adapterx")}
    assert rows["| linear"].endswith("| amd-avx2 |") and rows["| adapterx"].endswith("| intel-amx |")  # per row


def test_table_reports_last_epoch_first_with_best_beside_and_the_commit(sweep, tmp_path):
    for seed, acc in ((0, 60.0), (1, 64.0)):
        d = tmp_path / "finetune" / "adapterx" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_results(acc)))
    out = tmp_path / "results.md"
    sweep.write_table(tmp_path, out, {"methods": ["adapterx"], "epochs": 3, "per_class": 5, "test_per_class": 0})
    text = out.read_text()
    assert "**last-epoch acc (%)** | best-epoch acc (%)" in text
    assert "| adapterx | 10 | 10.00 | 62.00 ± 2.83 | 63.00 ± 2.83 | 61.00 ± 2.83 | 2 | 0123456 | 60 |" in text
    assert "the whole ModelNet40 test split" in text


def test_plan_lists_finished_and_remaining_runs_with_an_estimate(sweep, tmp_path, capsys):
    ledger = tmp_path / "ledger"
    _run_dir(ledger / "finetune" / "linear" / "seed0", acc_last=40.0, method="linear", time_s=120.0)
    rc = sweep.main(["--ledger", str(ledger), "--root", str(tmp_path / "runs"), "--plan", "--methods", "linear",
                     "full", "--seeds-for", "--epochs", "10", "--data-root", "root"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "finished     finetune/linear/seed0" in out
    assert "to run       finetune/full/seed0" in out and "~30 min" in out  # 10 epochs x the 3 min default
    assert "1 of 2 runs left" in out



def test_plan_estimates_an_unrun_method_from_the_finished_runs_of_its_family(sweep):
    per_epoch = {"adapterx": 2.0, "dapt": 3.0, "pointgst": 10.0, "linear": 1.0}
    assert sweep.epoch_estimate("dapt", per_epoch) == 3.0        # its own median first
    assert sweep.epoch_estimate("idpt", per_epoch) == 3.0        # else the PEFT runs' median (2, 3, 10)
    assert sweep.epoch_estimate("full", per_epoch) == sweep.DEFAULT_EPOCH_MINUTES["full"]  # no full run yet

def _fold(root: Path, name: str, setting: str, fold: int, acc: float) -> None:
    d = root / "fewshot" / name / setting / f"fold{fold}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"status": "finished", "params": {"trainable": 5},
                                                "last": {"val_acc": acc}, "best": {"acc": acc + 5}}))


def test_the_fewshot_header_states_each_rows_recipe_from_its_folds(sweep, tmp_path):
    for fold, lr in enumerate((2e-3, 2e-3)):
        _fold(tmp_path, "linear", "5w10s", fold, 70.0)
        res = tmp_path / "fewshot" / "linear" / "5w10s" / f"fold{fold}" / "results.json"
        res.write_text(json.dumps({**json.loads(res.read_text()),
                                   "config": {"optimizer": {"lr": lr}, "scheduler": {"warmup_epochs": 1}}}))
    assert sweep.fewshot_recipes(tmp_path) == {"linear": "lr 0.002, warm-up 1"}
    _fold(tmp_path, "mhr_protocol/mhr_z", "5w10s", 0, 60.0)  # a protocol row: its own lr, under its row name
    res = tmp_path / "fewshot" / "mhr_protocol" / "mhr_z" / "5w10s" / "fold0" / "results.json"
    res.write_text(json.dumps({**json.loads(res.read_text()),
                               "config": {"optimizer": {"lr": 1e-2}, "scheduler": {"warmup_epochs": 1}}}))
    assert sweep.fewshot_recipes(tmp_path) == {"linear": "lr 0.002, warm-up 1", "MHR-z": "lr 0.01, warm-up 1"}
    section = "\n".join(sweep._fewshot_section(tmp_path, {"fewshot": {"epochs": 30}}))
    assert "30 epochs per fold" in section and "linear: lr 0.002, warm-up 1" in section
    assert "| method | 5w10s | 10w20s |" in section  # the sweep's two settings, not the configs' product


def test_fewshot_and_mhr_rows_are_rebuilt_from_the_ledger(sweep, tmp_path):
    for fold, acc in enumerate((80.0, 90.0)):
        _fold(tmp_path, "adapterx", "5w10s", fold, acc)
        _fold(tmp_path, "mhr_protocol/mhr_z", "5w10s", fold, acc - 10)
    rows = {r["name"]: r["fewshot"]["5way10shot"] for r in sweep.fewshot_rows(tmp_path)}
    assert rows["adapterx"]["mean"] == 85.0 and rows["adapterx"]["std"] == 5.0  # last epoch, population std
    assert rows["MHR-z"]["accs"] == [70.0, 80.0]
    text = "\n".join(sweep._fewshot_section(tmp_path, {"fewshot": {"epochs": 30}}))
    assert "| adapterx |" in text and "| MHR-z |" in text and "30 epochs per fold" in text


def test_fewshot_rows_are_paired_within_the_group_that_shares_its_episodes(sweep, tmp_path):
    for fold, (a, f, p, m) in enumerate([(90.0, 85.0, 60.0, 70.0), (80.0, 80.0, 50.0, 45.0)]):
        _fold(tmp_path, "adapterx", "5w10s", fold, a)
        _fold(tmp_path, "full", "5w10s", fold, f)
        _fold(tmp_path, "mhr_protocol/poly", "5w10s", fold, p)
        _fold(tmp_path, "mhr_protocol/mhr", "5w10s", fold, m)
    text = "\n".join(sweep._fewshot_section(tmp_path, {"fewshot": {"epochs": 30}}))
    assert "| method − full | 5w10s | 10w20s |" in text and "| adapterx | +2.5 ± 2.5 (1/1/0) | — |" in text
    assert "| method − Poly | 5w10s | 10w20s |" in text and "| MHR | +2.5 ± 7.5 (1/0/1) | — |" in text
    assert "| MHR | +" in text and "| Poly | +" not in text and "| full | +" not in text  # no cross-group pairs


def test_seed_from_ledger_lets_the_fewshot_sweep_skip_recorded_folds(sweep, tmp_path):
    _fold(tmp_path / "ledger", "full", "5w10s", 3, 75.0)
    sweep._seed_from_ledger(tmp_path / "ledger" / "fewshot" / "full", tmp_path / "runs" / "fewshot" / "full")
    copied = tmp_path / "runs" / "fewshot" / "full" / "5w10s" / "fold3" / "results.json"
    assert json.loads(copied.read_text())["last"]["val_acc"] == 75.0


def test_expert_usage_plot_comes_from_the_adapterx_row(sweep, tmp_path):
    d = tmp_path / "finetune" / "adapterx" / "seed0"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({**_results(60.0), "seed": 0,
                                                "expert_usage": [[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]}))
    out = tmp_path / "results.md"
    sweep.write_table(tmp_path, out, {"methods": ["adapterx"]})
    text = out.read_text()
    assert "2–4 of 4 experts take at least half the balanced share" in text
    assert (tmp_path / "results_expert_usage.png").stat().st_size > 1000


def test_rows_name_every_commit_a_run_started_or_resumed_on(sweep, tmp_path):
    from pointpeft.engine.summary import Row

    run = {**_results(50.0), "git_commits": ["aaaaaaa111", "bbbbbbb222-dirty"]}
    assert Row("x", [run, _results(51.0)]).commits == ["aaaaaaa", "bbbbbbb+", "0123456"]


def test_results_keep_the_commit_the_run_started_on(tmp_path, monkeypatch):
    """A run that trains for hours while commits land must say which code it ran, not the HEAD at its end."""
    from engine_cases import tiny_config

    import pointpeft.engine.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "git_commit", lambda: "start")
    t = trainer_mod.Trainer(tiny_config(), tmp_path / "run")
    monkeypatch.setattr(trainer_mod, "git_commit", lambda: "later")
    res = t.results()
    assert res["git_commit"] == "start" and res["git_commits"] == ["start"]
    from pointpeft.engine.train_state import read_train_state, save_train_state

    save_train_state(tmp_path / "state.pth", t.model, **t.state_parts())  # what ckpt-last.pth holds
    resumed = trainer_mod.Trainer(tiny_config(), tmp_path / "run2")  # a resume after a commit landed
    resumed.restore(read_train_state(tmp_path / "state.pth"))
    assert resumed.results()["git_commit"] == "start" and resumed.results()["git_commits"] == ["start", "later"]


def test_git_commit_is_dirty_for_code_changes_but_not_for_the_ledger(tmp_path):
    """The sweep updates results/<ledger>/budget.json before each run: that must not mark the run's code dirty."""
    import subprocess

    from pointpeft.engine.run_dir import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "budget.json").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.py").write_text("b = 1\n")
    (tmp_path / "docs").mkdir()
    for name in ("results.md", "results_params.png", "design-notes.md"):
        (tmp_path / "docs" / name).write_text("old\n")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    clean = git_commit(tmp_path / "sub")
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "results" / "budget.json").write_text('{"methods": ["pointgst"]}\n')
    assert git_commit(tmp_path / "sub") == clean, "a ledger update is not a code change"
    for name in ("results.md", "results_params.png"):  # the table and plots an earlier invocation rewrote
        (tmp_path / "docs" / name).write_text("new\n")
    assert git_commit(tmp_path / "sub") == clean, "the sweep's own table is not a code change"
    (tmp_path / "docs" / "design-notes.md").write_text("new\n")
    assert git_commit(tmp_path / "sub") == clean + "-dirty"
    git("checkout", "--", "docs/design-notes.md")
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path / "sub") == clean + "-dirty"


def _fewshot_args(sweep, **kw):
    base = dict(fewshot=["linear"], fewshot_epochs=20, mhr_epochs=10, mhr_per_class=50, data_root="root",
                backbone="point_mae_small", warmup_epochs=1, amp="fp32", use_search=True, skip_mhr=False)
    return sweep.argparse.Namespace(**{**base, **kw})


def test_fewshot_argv_asks_for_the_two_settings_and_a_cpu_sized_mhr_phase(sweep, tmp_path):
    from pointpeft.fewshot.cli import build_parser, resolve_config
    from pointpeft.fewshot.options import fewshot_options, mhr_options

    args, budget = _fewshot_args(sweep), {"amp": "fp32", "search": {"key": "optimizer.lr"}}
    for method, way, shot in (("linear", 5, 10), ("mhr", 10, 20)):
        argv = sweep.fewshot_argv(args, method, tmp_path, "ckpt.pth", budget, {"linear": "2e-3"}, way, shot)
        cfg = resolve_config(build_parser().parse_args(argv))  # the fewshot tool accepts every key
        opts = fewshot_options(cfg)
        assert opts.settings == [(way, shot)] and list(opts.folds) == list(range(10))
        assert cfg["train"]["epochs"] == 20
        if method == "mhr":
            mopts = mhr_options(cfg, opts)
            assert (mopts.epochs, mopts.train_per_class) == (10, 50)
            assert not any(a.startswith("optimizer.lr=") for a in argv)
        else:
            assert cfg["optimizer"]["lr"] == 2e-3


def test_the_fewshot_step_skips_what_the_ledger_holds_and_never_copies_an_inventory(sweep, tmp_path, monkeypatch):
    ledger, runs = tmp_path / "ledger", tmp_path / "runs"
    for rel in sweep.fewshot_folds("linear"):
        _fold(ledger, "linear", rel.parent.name, int(rel.name[4:]), 70.0)
    _fold(ledger, "mhr_protocol/poly", "5w10s", 0, 60.0)
    _fold(ledger, "mhr_protocol", "multitask_poly", 0, 50.0)  # an inventory's summary: its weights are not here
    calls = []

    def fake_main(argv):
        calls.append(argv[argv.index("--name") + 1] + " " + argv[argv.index("--way") + 1] + "w")
        return 0

    import pointpeft.fewshot.cli as fewshot_cli

    monkeypatch.setattr(fewshot_cli, "main", fake_main)
    sweep.run_fewshot(_fewshot_args(sweep, use_search=False), runs, ledger, "ckpt.pth", {"amp": "fp32"})
    assert calls == ["mhr_protocol 5w", "mhr_protocol 10w"]  # linear: all 20 folds recorded, skipped
    assert (runs / "fewshot" / "mhr_protocol" / "poly" / "5w10s" / "fold0" / "results.json").is_file()
    assert not (runs / "fewshot" / "mhr_protocol" / "multitask_poly").exists()


def test_a_retrained_inventory_that_differs_keeps_the_ledgers_summary_and_warns(sweep, tmp_path, monkeypatch,
                                                                                  caplog):
    ledger, runs = tmp_path / "ledger", tmp_path / "runs"

    def inventory(root: Path, mode: str, val: float, seconds: float) -> Path:
        d = root / "fewshot" / "mhr_protocol" / f"multitask_{mode}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"status": "finished", "params": {"trainable": 5},
                                                    "best": {"acc": val}, "last": {"val_acc": val},
                                                    "history": [{"epoch": 1, "val_acc": val, "time_s": seconds}]}))
        return d / "results.json"

    recorded_poly, recorded_mhr = inventory(ledger, "poly", 70.0, 40.0), inventory(ledger, "mhr", 71.0, 40.0)

    def fake_main(argv):  # the sitting trains both inventories again: Poly the same epochs, MHR other ones
        if not (runs / "fewshot" / "mhr_protocol" / "multitask_poly").exists():
            inventory(runs, "poly", 70.0, 55.0)  # only the wall time differs: the same training
            inventory(runs, "mhr", 69.5, 40.0)
        _fold(runs, "mhr_protocol/mhr", argv[argv.index("--way") + 1] + "w" + argv[argv.index("--shot") + 1] + "s",
              0, 80.0)
        return 0

    import pointpeft.fewshot.cli as fewshot_cli

    monkeypatch.setattr(fewshot_cli, "main", fake_main)
    with caplog.at_level(logging.WARNING):
        sweep.run_fewshot(_fewshot_args(sweep, use_search=False, fewshot=[]), runs, ledger, "ckpt.pth",
                          {"amp": "fp32"})
    assert json.loads(recorded_mhr.read_text())["history"][0]["val_acc"] == 71.0  # the ledger's first summary
    assert json.loads(recorded_poly.read_text())["history"][0]["time_s"] == 55.0  # same training: recorded again
    assert "multitask_mhr: the inventory trained in this sitting differs" in caplog.text
    assert "multitask_poly" not in caplog.text
    assert (ledger / "fewshot" / "mhr_protocol" / "mhr" / "10w20s" / "fold0" / "results.json").is_file()


def test_a_fewshot_setting_that_stops_early_still_records_its_finished_folds(sweep, tmp_path, monkeypatch):
    ledger, runs = tmp_path / "ledger", tmp_path / "runs"

    def fake_main(argv):  # two folds finish, then the sitting is stopped (Ctrl-C or kill: exit code 130)
        for k in (0, 1):
            _fold(runs, "linear", "5w10s", k, 70.0 + k)
        return 130

    import pointpeft.fewshot.cli as fewshot_cli

    monkeypatch.setattr(fewshot_cli, "main", fake_main)
    with pytest.raises(SystemExit, match="exit code 130; its finished folds are in the ledger"):
        sweep.run_fewshot(_fewshot_args(sweep, use_search=False, skip_mhr=True), runs, ledger, "ckpt.pth",
                          {"amp": "fp32"})
    for k in (0, 1):
        assert (ledger / "fewshot" / "linear" / "5w10s" / f"fold{k}" / "results.json").is_file()
    assert not (ledger / "fewshot" / "linear" / "10w20s").exists()  # the next setting never started


def test_plan_counts_the_fewshot_folds_left(sweep, tmp_path, capsys):
    ledger = tmp_path / "ledger"
    for k in range(10):
        _fold(ledger, "linear", "5w10s", k, 70.0)
    rc = sweep.main(["--ledger", str(ledger), "--plan", "--fewshot", "linear", "--data-root", "root"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "finished     fewshot/linear/5w10s" in out and "10/10 folds" in out
    assert "to run       fewshot/linear/10w20s" in out and "0/10 folds" in out
    assert "fewshot/mhr_protocol/mhr_z/10w20s" in out
    assert "90 few-shot folds left" in out  # linear's 10w20s + 4 MHR modes x 2 settings x 10
    assert "inventories not counted: none recorded yet" in out
    for mode, seconds in (("poly", 300.0), ("mhr", 420.0)):  # recorded inventories: a fresh clone trains them again
        d = ledger / "fewshot" / "mhr_protocol" / f"multitask_{mode}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"status": "finished", "elapsed_s": seconds, "params": {"trainable": 5},
                                                    "last": {"val_acc": 90.0}, "best": {"acc": 90.0}}))
    assert sweep.inventory_minutes(ledger / "fewshot" / "mhr_protocol") == 12.0
    sweep.main(["--ledger", str(ledger), "--plan", "--fewshot", "linear", "--data-root", "root"])
    assert "MHR's multi-task inventories ~12 min, as the ledger recorded them" in capsys.readouterr().out


def test_skip_mhr_leaves_the_mhr_rows_for_a_later_fewshot_invocation(sweep, tmp_path, monkeypatch, capsys):
    calls = []
    import pointpeft.fewshot.cli as fewshot_cli

    monkeypatch.setattr(fewshot_cli, "main", lambda argv: calls.append(argv[argv.index("--name") + 1]) or 0)
    sweep.run_fewshot(_fewshot_args(sweep, use_search=False, skip_mhr=True), tmp_path / "runs", tmp_path / "ledger",
                      "ckpt.pth", {"amp": "fp32"})
    assert calls == ["linear", "linear"]  # its two settings, no MHR protocol
    rc = sweep.main(["--ledger", str(tmp_path / "ledger"), "--plan", "--fewshot", "linear", "--skip-mhr",
                     "--data-root", "root"])
    assert rc == 0 and "mhr_protocol" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sweep.main(["--ledger", str(tmp_path / "ledger"), "--plan", "--skip-mhr"])
