"""scripts/sweep.py's table comes only from the runs' results.json files; processes sharing a root share one budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    return load_script("scripts/sweep.py")


def _run(root: Path, method: str, seed: int, acc: float, trainable: int, status: str = "finished",
         variant: str | None = None) -> None:
    d = (root / "variants" / variant if variant else root / "finetune") / method / f"seed{seed}"
    d.mkdir(parents=True)
    config = {"peft": {"type": method}, "description": f"{method} row"}
    if variant:
        config["exp_name"] = f"{method}@{variant}"
    results = {"status": status, "task": "classification", "config": config,
               "params": {"trainable": trainable, "total": 1000, "percent": trainable / 10},
               "best": {"epoch": 3, "acc": acc, "mean_class_acc": acc - 1},
               "last": {"epoch": 4, "val_acc": acc - 2, "val_mean_class_acc": acc - 3},  # the trainer's last row
               "git_commit": "0123456789-dirty",
               "history": [{"epoch": 1, "time_s": 10.0}], "data_sizes": {"train": 200, "val": 60},
               "machine": {"cpu_model": "test cpu", "cpu_affinity": 2}, "amp": {"mode": "fp32"}}
    (d / "results.json").write_text(json.dumps(results))


def test_table_from_results_files(sweep, tmp_path):
    budget = {"backbone": "point_mae_tiny", "pretrain_epochs": 1, "pretrain_per_class": 2, "epochs": 3,
              "per_class": 5, "test_per_class": 1, "methods": ["linear", "adapterx", "full"], "seeds": [0],
              "seeds_for": ["adapterx"], "more_seeds": [1]}
    sweep.record_budget(tmp_path / "budget.json", dict(budget))
    _run(tmp_path, "adapterx", 0, 60.0, 100)
    _run(tmp_path, "adapterx", 1, 64.0, 100)
    _run(tmp_path, "linear", 0, 50.0, 50)
    _run(tmp_path, "full", 0, 99.0, 1000, status="running")  # unfinished runs stay out of the table
    out = tmp_path / "results.md"
    sweep.write_table(tmp_path, out, budget)
    text = out.read_text()
    # last epoch first, best epoch beside it, last-epoch mean-class accuracy, seeds, commit (+: dirty tree)
    assert "| linear | 50 | 5.00 | 48.00 | 50.00 | 47.00 | 1 | 0123456+ | 10 |" in text
    assert "| adapterx | 100 | 10.00 | 60.00 ± 2.83 | 62.00 ± 2.83 | 59.00 ± 2.83 | 2 | 0123456+ | 10 |" in text
    assert "Not run yet (the sweep resumes where it stopped): full." in text
    assert "(200 clouds)" in text and "(60 clouds;" in text and "test cpu" in text
    assert (tmp_path / "results_params.png").stat().st_size > 1000


def test_processes_on_one_root_share_the_budget(sweep, tmp_path):
    base = {"backbone": "b", "pretrain_epochs": 1, "pretrain_per_class": 2, "epochs": 3, "per_class": 5,
            "test_per_class": 1, "methods": ["linear"], "seeds": [0], "seeds_for": [], "more_seeds": []}
    path = tmp_path / "budget.json"
    sweep.record_budget(path, dict(base))
    sweep.record_budget(path, {**base, "methods": ["mhr", "linear"]})
    assert json.loads(path.read_text())["methods"] == ["linear", "mhr"]
    with pytest.raises(SystemExit, match="epochs: 3 vs 9"):
        sweep.record_budget(path, {**base, "epochs": 9})


BUDGET = {"backbone": "b", "pretrain_epochs": 1, "pretrain_per_class": 2, "epochs": 3, "per_class": 5,
          "test_per_class": 1, "methods": ["linear"], "seeds": [0], "seeds_for": [], "more_seeds": []}


def test_variants_are_recorded_apart_and_cannot_change_their_overrides(sweep, tmp_path):
    path = tmp_path / "budget.json"
    sweep.record_budget(path, dict(BUDGET))
    var = {**BUDGET, "methods": [], "seeds": [], "variants": {"lr": {"set": ["optimizer.lr=2e-3"], "methods":
                                                                      ["adapterx"], "seeds": [0]}}}
    sweep.record_budget(path, dict(var))
    sweep.record_budget(path, {**var, "variants": {"lr": {"set": ["optimizer.lr=2e-3"], "methods": ["lora"],
                                                          "seeds": [1]}}})
    rec = json.loads(path.read_text())
    assert rec["methods"] == ["linear"]  # the main table's list is untouched by a variant
    assert rec["variants"]["lr"] == {"set": ["optimizer.lr=2e-3"], "methods": ["adapterx", "lora"], "seeds": [0, 1]}
    with pytest.raises(SystemExit, match="variant 'lr'"):
        sweep.record_budget(path, {**var, "variants": {"lr": {"set": ["optimizer.lr=1e-3"], "methods": [],
                                                              "seeds": [0]}}})


def test_investigations_section_lists_variants_and_other_roots(sweep, tmp_path):
    main, other = tmp_path / "main", tmp_path / "other"
    main.mkdir()
    other.mkdir()
    sweep.record_budget(main / "budget.json", {**BUDGET, "variants": {"lr2e-3": {
        "set": ["optimizer.lr=2e-3"], "methods": ["adapterx"], "seeds": [0]}}})
    sweep.record_budget(other / "budget.json", {**BUDGET, "pretrain_epochs": 4, "pretrain_per_class": 0})
    _run(main, "linear", 0, 50.0, 50)
    _run(main, "adapterx", 0, 66.0, 100, variant="lr2e-3")
    _run(other, "adapterx", 0, 70.0, 100)
    sweep.remember_also(main / "budget.json", [str(other)])
    out = tmp_path / "results.md"
    sweep.write_table(main, out, {})
    text = out.read_text()
    main_table, investigations = text.split("## Investigations")
    assert "| linear | 50 |" in main_table and "adapterx" not in main_table.split("| method |")[1].split("###")[0]
    assert "### Variant `lr2e-3`: `optimizer.lr=2e-3`" in investigations
    assert "| adapterx@lr2e-3 | 100 | 10.00 | 64.00 | 66.00 |" in investigations
    assert f"### Another pretraining: `{other}`" in investigations and "for 4 epochs" in investigations
    assert "(all per class" in investigations and "| adapterx | 100 | 10.00 | 68.00 | 70.00 |" in investigations
    assert "the same as the main table" in investigations


def test_set_needs_a_variant(sweep, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--set", "optimizer.lr=1e-3", "--table-only"])
    assert "--set needs --variant" in capsys.readouterr().err
