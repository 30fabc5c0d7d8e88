"""scripts/summarize_vtab.py on fabricated sweeps: per-task values, VTAB group means, the overall mean, and the ways a
run's task and method are found (results keys, resolved config beside it, path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.scripts import load_script

from pointpeft.data.vision import VTAB_TASKS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "summarize_vtab.py"


@pytest.fixture(scope="module")
def sv():
    mod = load_script("scripts/summarize_vtab.py")
    yield mod
    sys.modules.pop(mod.__name__, None)


def acc_of(method_index: int, task_index: int) -> float:
    return 40.0 + method_index * 5 + task_index


def write_results(folder: Path, acc: float, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps({"best": {"acc": acc, "epoch": 99}, "last": {"acc": acc - 1}, **extra}))
    return path


def fake_sweep(root: Path) -> None:
    """full via the config beside results.json, adaptformer_x via the path, lora via results keys (two seeds)."""
    for ti, task in enumerate(VTAB_TASKS):
        cfg = {"model": {"type": "vit"}, "data": {"train": {"type": "vtab1k", "task": task, "split": "train800val200"}}}
        run = write_results(root / "full" / f"{task}_run", acc_of(0, ti)).parent
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        write_results(root / "adaptformer_x" / task / "exp", acc_of(1, ti))
        for seed, delta in ((0, -0.5), (1, 0.5)):
            write_results(root / "sweep" / f"r{ti}_{seed}", acc_of(2, ti) + delta, task=task, method="lora")


def test_table_values_and_group_means(tmp_path: Path, sv) -> None:
    fake_sweep(tmp_path)
    runs, skipped = sv.collect([tmp_path])
    assert skipped == [] and len(runs) == 19 * 4
    rows = {r["method"]: r for r in sv.build_table(runs)}
    assert list(rows) == ["full", "lora", "adaptformer_x"]  # the paper's row order
    tasks = list(VTAB_TASKS)
    for mi, method in enumerate(("full", "adaptformer_x", "lora")):
        row = rows[method]
        assert row["tasks"] == {t: pytest.approx(acc_of(mi, i)) for i, t in enumerate(tasks)}
        nat = sum(acc_of(mi, i) for i in range(7)) / 7
        spe = sum(acc_of(mi, i) for i in range(7, 11)) / 4
        stru = sum(acc_of(mi, i) for i in range(11, 19)) / 8
        assert row["groups"] == pytest.approx({"natural": nat, "specialized": spe, "structured": stru})
        assert row["mean"] == pytest.approx((nat + spe + stru) / 3)
        assert row["mean_tasks"] == pytest.approx(sum(acc_of(mi, i) for i in range(19)) / 19)
    assert rows["lora"]["runs"]["cifar"] == 2
    md = sv.format_markdown(list(rows.values()))
    header = md.splitlines()[0]
    assert header.index("sun397") < header.index("Natural") < header.index("patch_camelyon")
    assert header.rstrip(" |").endswith("Mean (19)")
    full_line = next(line for line in md.splitlines() if line.startswith("| full |"))
    assert f"| {(sum(acc_of(0, i) for i in range(7)) / 7):.1f} |" in full_line


def test_fractions_missing_tasks_and_partial(tmp_path: Path, sv) -> None:
    for ti, task in enumerate(list(VTAB_TASKS)[:8]):  # all 7 natural tasks and patch_camelyon, as fractions
        write_results(tmp_path / "linear" / task, (50.0 + ti) / 100)
    rows = sv.build_table(sv.collect([tmp_path])[0])
    row = rows[0]
    assert row["method"] == "linear" and row["tasks"]["cifar"] == pytest.approx(50.0)
    assert row["groups"]["natural"] == pytest.approx(53.0)
    assert row["groups"]["specialized"] is None and row["mean"] is None and row["mean_tasks"] is None
    part = sv.build_table(sv.collect([tmp_path])[0], partial=True)[0]
    assert part["groups"]["specialized"] == pytest.approx(57.0) and "specialized" in part["partial_groups"]
    assert "57.0*" in sv.format_markdown([part]) and "| - |" in sv.format_markdown([row])


def test_unplaceable_files_are_skipped_or_fatal(tmp_path: Path, sv) -> None:
    write_results(tmp_path / "lora" / "cifar", 70.0)
    write_results(tmp_path / "lora" / "imagenet", 70.0)  # no VTAB task in the path
    (tmp_path / "lora" / "dtd").mkdir()
    (tmp_path / "lora" / "dtd" / "results.json").write_text("{not json")
    (tmp_path / "lora" / "svhn").mkdir()
    (tmp_path / "lora" / "svhn" / "results.json").write_text(json.dumps({"best": {"loss": 0.3}}))
    runs, skipped = sv.collect([tmp_path])
    assert [r.task for r in runs] == ["cifar"] and len(skipped) == 3
    assert any("not valid JSON" in s for s in skipped) and any("which VTAB-1k task" in s for s in skipped)
    assert any("no accuracy" in s for s in skipped)
    with pytest.raises(sv.SummaryError):
        sv.collect([tmp_path], strict=True)


def test_cli_writes_outputs(tmp_path: Path) -> None:
    fake_sweep(tmp_path / "exp")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "exp"), "--out", str(out / "t.md"),
                           "--csv", str(out / "t.csv"), "--json", str(out / "t.json")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (out / "t.md").read_text() and proc.stdout.startswith("| method | cifar |")
    assert "76 run(s), 3 method(s)" in proc.stderr
    csv_lines = (out / "t.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,cifar,caltech101") and len(csv_lines) == 4
    data = json.loads((out / "t.json").read_text())
    assert [r["method"] for r in data] == ["full", "lora", "adaptformer_x"]
    empty = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert empty.returncode == 1 and "no VTAB-1k results.json" in empty.stderr
