"""Few-shot sweeps (tools/fewshot.py): options, episodes on demand, resume, parallel folds, the table, and a real
ModelNet40 5-way 10-shot fold trained end to end. Fold generation's determinism and class balance are tested in
tests/test_data.py (test_fewshot_generate_and_read)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pointpeft.config import load_config
from pointpeft.errors import ConfigError
from pointpeft.fewshot import fewshot_options, format_table, parse_folds, run_sweep, summarize_method
from pointpeft.fewshot.cli import main as fewshot_main
from pointpeft.fewshot.folds import MANIFEST, ensure_folds
from pointpeft.fewshot.sweep import FoldJob, fold_config, fold_run_dir, plan_sweep
from pointpeft.fewshot.table import format_paired_table, paired_differences
from pointpeft.utils.safe_pickle import safe_load

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.type=point_mae_tiny", "model.drop_path_rate=0.0", "data.train.npoints=128", "data.val.npoints=128",
        "data.batch_size=8", "train.progress=off", "scheduler.warmup_epochs=0", "train.amp=fp32"]


@pytest.fixture(autouse=True)
def _fresh_log_handlers() -> Any:
    """Drop pointpeft's console handler after each test: it holds the stream of the test that created it."""
    yield
    logger = logging.getLogger("pointpeft")
    for h in list(logger.handlers):
        logger.removeHandler(h)


def _synthetic_cfg(tmp: Path, *extra: str, epochs: int = 1) -> Any:
    return load_config(REPO / "cfgs/fewshot/lora.yaml", [
        *TINY, f"train.epochs={epochs}", "fewshot.way=3", "fewshot.shot=4", "fewshot.query=3", "fewshot.folds=0-1",
        f"fewshot.root={tmp / 'episodes'}", "fewshot.generate_from={type: synthetic_shapes, npoints: 256}", *extra])


def test_options_parse_and_reject_unknown_keys(tmp_path: Path) -> None:
    assert parse_folds("0-3,7") == [0, 1, 2, 3, 7] and parse_folds(5) == [5] and parse_folds([2, 1, 2]) == [1, 2]
    for bad in ("3-1", "a", "", -1):
        with pytest.raises(ValueError):
            parse_folds(bad)
    opts = fewshot_options(load_config(REPO / "cfgs/fewshot/adapterx.yaml"))
    assert opts.settings == [(5, 10), (5, 20), (10, 10), (10, 20)] and opts.fold_ids == list(range(10))
    assert opts.report == "last" and opts.query == 20
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fewshot.wayz'\]"):
        fewshot_options(load_config(REPO / "cfgs/fewshot/full.yaml", ["fewshot.wayz=5"]))
    with pytest.raises(ConfigError, match=r"<override>: unknown key\(s\) \['fewshot.mhr.num_task'\]"):
        fewshot_options(load_config(REPO / "cfgs/fewshot/mhr.yaml", ["fewshot.mhr.num_task=3"]))
    with pytest.raises(ConfigError, match="mhr.modes must be"):
        fewshot_options(load_config(REPO / "cfgs/fewshot/mhr.yaml", ["fewshot.mhr.modes=[mhr_x]"]))
    with pytest.raises(ConfigError, match="report must be one of"):
        fewshot_options(load_config(REPO / "cfgs/fewshot/full.yaml", ["fewshot.report=max"]))
    # every method config loads with its registered peft type
    from pointpeft.recipes import family_recipe
    from pointpeft.registry import PEFT_METHODS

    for path in sorted((REPO / "cfgs/fewshot").glob("*.yaml")):
        cfg = load_config(path)
        # the Point-MAE lineage's 150 epochs, unless the method's released few-shot recipe departs (GAPrompt: 300)
        departs = family_recipe(path.stem, "fewshot")
        own = load_config(departs).get_path("train.epochs") if departs else None
        assert cfg["peft"]["type"] in PEFT_METHODS.keys() and cfg["train"]["epochs"] == (own or 150), path
        fewshot_options(cfg)


def test_fold_config_points_train_and_val_at_the_episode(tmp_path: Path) -> None:
    cfg = _synthetic_cfg(tmp_path)
    fc = fold_config(cfg, tmp_path / "eps", way=10, shot=20, fold=7, threads=3)
    assert fc["data"]["train"] == {**cfg["data"]["train"], "root": str(tmp_path / "eps"), "way": 10,
                                        "shot": 20, "fold": 7, "split": "train"}
    assert fc["data"]["val"]["split"] == "test" and fc["data"]["val"]["fold"] == 7
    assert fc["model"]["num_classes"] == 10 and fc["train"]["threads"] == 3
    assert fc.source_of("data.train.way") == "<fewshot>" and cfg["model"]["num_classes"] == 5  # input untouched
    bad = load_config(REPO / "cfgs/fewshot/full.yaml", ["data.train.type=modelnet40"])
    with pytest.raises(ConfigError, match="must be a 'type: fewshot' node"):
        fold_config(bad, tmp_path, 5, 10, 0)


def test_episodes_generated_on_demand_and_never_mixed(tmp_path: Path) -> None:
    opts = fewshot_options(_synthetic_cfg(tmp_path))
    root = ensure_folds(opts)
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.pkl"))
    assert files == ["3way4shot/0.pkl", "3way4shot/1.pkl"]
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["generate_from"]["type"] == "synthetic_shapes" and manifest["seed"] == 0
    ep = safe_load(root / "3way4shot/1.pkl")
    assert np.bincount([t[1] for t in ep["train"]]).tolist() == [4, 4, 4]
    assert np.bincount([t[1] for t in ep["test"]]).tolist() == [3, 3, 3]
    before = (root / "3way4shot/0.pkl").read_bytes()
    assert ensure_folds(opts) == root and (root / "3way4shot/0.pkl").read_bytes() == before  # nothing to do
    other = fewshot_options(_synthetic_cfg(tmp_path, "fewshot.seed=1", "fewshot.shot=5"))
    with pytest.raises(ConfigError, match="generated with another recipe .*seed: on disk 0 vs now 1"):
        ensure_folds(other)
    # a folder of released episodes (no manifest) is never topped up with generated ones
    released = tmp_path / "released"
    (released / "3way4shot").mkdir(parents=True)
    (released / "3way4shot/0.pkl").write_bytes(pickle.dumps(ep))
    mixed = fewshot_options(_synthetic_cfg(tmp_path, f"fewshot.root={released}"))
    with pytest.raises(ConfigError, match="not generated here"):
        ensure_folds(mixed)
    missing = fewshot_options(_synthetic_cfg(tmp_path, f"fewshot.root={released}", "fewshot.generate_from=null"))
    with pytest.raises(Exception, match=r"3way4shot/1.pkl"):
        ensure_folds(missing)


def _write_fold(d: Path, acc_last: float, acc_best: float, status: str = "finished") -> None:
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"status": status, "method": "lora", "params": {"trainable": 7},
                                                "last": {"val_acc": acc_last}, "best": {"acc": acc_best}}))


def test_summary_and_table_formatting(tmp_path: Path) -> None:
    m = tmp_path / "lora"
    for k, (a, b) in enumerate([(90.0, 95.0), (96.0, 97.0), (93.0, 99.0)]):
        _write_fold(m / "5w10s" / f"fold{k}", a, b)
    _write_fold(m / "5w10s" / "fold3", 10.0, 10.0, status="running")  # unfinished: left out
    _write_fold(m / "10w20s" / "fold0", 80.0, 81.0)
    s = summarize_method(m, "lora", extra={"folds_requested": 3})
    cell = s["fewshot"]["5way10shot"]
    assert cell["folds"] == [0, 1, 2] and cell["accs"] == [90.0, 96.0, 93.0] and cell["n"] == 3
    assert cell["mean"] == pytest.approx(93.0) and cell["std"] == pytest.approx(np.std([90, 96, 93]))
    assert s["params"] == {"trainable": 7}
    best = summarize_method(m, "lora-best", report="best", extra={"folds_requested": 3})
    assert best["fewshot"]["5way10shot"]["mean"] == pytest.approx(97.0)
    table = format_table([s, {"name": "full", "fewshot": {"3way4shot": {"mean": 50.0, "std": 0.0, "n": 10}}}])
    assert table.splitlines() == [
        "| method | 5w10s | 5w20s | 10w10s | 10w20s | 3w4s |",
        "|---|---|---|---|---|---|",
        "| lora | 93.0 ± 2.4 | — | — | 80.0 ± 0.0 (n=1) | — |",
        "| full | — | — | — | — | 50.0 ± 0.0 |",
    ]


def test_sweep_resumes_and_skips_finished_folds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pointpeft.config import Config
    from pointpeft.engine.trainer import Trainer

    cfg = _synthetic_cfg(tmp_path, epochs=2)
    opts = fewshot_options(cfg)
    root = tmp_path / "runs"
    # fold 0 is interrupted after its first epoch (ckpt-last.pth + results.json status running)
    jobs, done = plan_sweep(cfg, "lora", opts, root, None, ensure_folds(opts))
    assert [j.fold for j in jobs] == [0, 1] and done == []
    job: FoldJob = jobs[0]
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True)
    first = Trainer(Config(job.config, sources=job.sources), run_dir)
    first.write_config()
    first.fit(until_epoch=1)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    epoch1 = first.history[0]

    rep = run_sweep(cfg, "lora", opts, root)
    assert sorted(rep.trained) == [str(fold_run_dir(root, "lora", 3, 4, k)) for k in (0, 1)] and not rep.failed
    res0 = json.loads((run_dir / "results.json").read_text())
    assert res0["status"] == "finished" and res0["epochs_done"] == 2
    assert res0["history"][0]["train_loss"] == pytest.approx(epoch1["train_loss"])  # resumed, not restarted
    cell = rep.summary["fewshot"]["3way4shot"]
    assert cell["n"] == 2 and 0.0 <= cell["mean"] <= 100.0

    # rerun through the command line with two parallel jobs: finished folds are skipped, fold 2 trains
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    argv = ["--config", str(REPO / "cfgs/fewshot/lora.yaml"), "--root", str(root), "--way", "3", "--shot", "4",
            "--folds", "0-2", "--jobs", "2", "--quiet", *TINY, "train.epochs=2", "fewshot.query=3",
            f"fewshot.root={tmp_path / 'episodes'}", "fewshot.generate_from={type: synthetic_shapes, npoints: 256}"]
    assert fewshot_main(argv) == 0
    out = capsys.readouterr().out
    assert "1 fold(s) trained, 2 finished before, 0 failed" in out and "| lora |" in out
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp
    summary = json.loads((root / "fewshot/lora/fewshot.json").read_text())
    assert summary["fewshot"]["3way4shot"]["folds"] == [0, 1, 2]
    assert "| lora |" in (root / "fewshot/table.md").read_text()
    assert json.loads((fold_run_dir(root, "lora", 3, 4, 2) / "results.json").read_text())["config"]["train"][
        "threads"] >= 1

    # another recipe in the same folders is refused, --overwrite redoes it
    assert fewshot_main([*argv, "optimizer.lr=1e-2"]) == 2
    with pytest.raises(ConfigError, match=r"fold0 holds a run of another experiment \(differs in optimizer.lr\)"):
        run_sweep(load_config(REPO / "cfgs/fewshot/lora.yaml", [*TINY, "train.epochs=2", "optimizer.lr=1e-2"]), "lora",
                  fewshot_options(cfg), root)
    assert fewshot_main([*argv, "optimizer.lr=1e-2", "--overwrite"]) == 0
    assert "3 fold(s) trained, 0 finished before" in capsys.readouterr().out


def test_real_modelnet40_5way10shot_beats_chance(tmp_path: Path, modelnet_h5_root: Path) -> None:
    """A 5-way 10-shot fold generated from the real ModelNet40 (support from train, 20 queries per class from
    test), point_mae_tiny from random init, 20 epochs on CPU: well above the 20% of chance."""
    cfg = load_config(REPO / "cfgs/fewshot/full.yaml", [
        "model.type=point_mae_tiny", "model.drop_path_rate=0.0", "data.train.npoints=256", "data.val.npoints=256",
        "data.batch_size=10", "optimizer.lr=2e-3", "scheduler.warmup_epochs=1", "train.epochs=20",
        "train.eval_every=5", "train.progress=off", "train.amp=fp32", "fewshot.way=5", "fewshot.shot=10",
        "fewshot.folds=0", f"fewshot.root={tmp_path / 'ModelNetFewshot'}",
        f"fewshot.generate_from={{type: modelnet40, root: '{modelnet_h5_root}', npoints: 1024}}"])
    rep = run_sweep(cfg, "full", fewshot_options(cfg), tmp_path / "runs")
    assert not rep.failed
    res = json.loads((fold_run_dir(tmp_path / "runs", "full", 5, 10, 0) / "results.json").read_text())
    assert res["config"]["model"]["num_classes"] == 5 and len(res["confusion_matrix"]) == 5
    assert np.asarray(res["confusion_matrix"]).sum() == 100  # 5 classes x 20 queries
    acc = rep.summary["fewshot"]["5way10shot"]["mean"]
    print(f"5-way 10-shot real ModelNet40 fold 0, query accuracy {acc:.1f}%")
    assert acc >= 40.0, f"query accuracy {acc:.1f}% is not clearly above chance (20%)"


def test_mhr_protocol_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Inventories trained on disjoint class tasks of the synthetic set, then 3-way 4-shot adaptation to the
    held-out classes with Poly, MHR, MHR-z and MHR-μ; MHR-z keeps the inventory, MHR-μ has no routing."""
    import torch

    from pointpeft.engine.train_state import read_train_state

    argv = ["--config", str(REPO / "cfgs/fewshot/mhr.yaml"), "--protocol", "mhr", "--way", "3", "--shot", "4",
            "--folds", "0", "--root", str(tmp_path), "--quiet", *TINY, "train.epochs=1", "fewshot.query=3",
            "fewshot.generate_from={type: synthetic_shapes, npoints: 128, num_samples: 120}",
            "fewshot.mhr.heldout_classes=3",
            "fewshot.mhr.num_tasks=3", "fewshot.mhr.classes_per_task=3", "fewshot.mhr.epochs=1",
            "fewshot.mhr.train_per_class=8", "peft.r=4", "peft.heads=2", "peft.num_skills=3"]
    assert fewshot_main(argv) == 0
    base = tmp_path / "fewshot/mhr"
    split = json.loads((base / "split.json").read_text())
    trained_classes = {c for t in split["training_tasks"] for c in t}
    assert len(split["heldout_classes"]) == 3 and len(trained_classes) == 9
    assert not trained_classes & set(split["heldout_classes"])
    episode = safe_load(base / "episodes/3way4shot/0.pkl")
    assert {t[2] for t in episode["train"] + episode["test"]} == set(split["heldout_classes"])

    summary = json.loads((base / "fewshot.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["Poly", "MHR", "MHR-z", "MHR-μ"]
    assert all(r["fewshot"]["3way4shot"]["n"] == 1 for r in summary["rows"])
    table = (tmp_path / "fewshot/table.md").read_text()
    assert "| MHR-z |" in table and "| Poly |" in table

    def state(run: Path) -> dict[str, torch.Tensor]:
        return read_train_state(run / "ckpt-last.pth")["model"]

    inv = state(base / "multitask_mhr")
    key = next(k for k in inv if k.endswith("lora_A"))
    assert inv[key].shape[0] == 3  # the inventory: 3 skills
    fold = "3w4s/fold0"
    z_res = json.loads((base / "mhr_z" / fold / "results.json").read_text())
    mhr_res = json.loads((base / "mhr" / fold / "results.json").read_text())
    assert z_res["params"]["trainable"] < mhr_res["params"]["trainable"]
    assert torch.equal(state(base / "mhr_z" / fold)[key], inv[key])  # MHR-z: inventory frozen
    assert not torch.equal(state(base / "mhr" / fold)[key], inv[key])  # MHR: inventory fine-tuned
    routing = key.replace("lora_A", "routing")
    assert state(base / "mhr_z" / fold)[routing].shape[0] == 4  # 3 training tasks + the unseen one
    mu = state(base / "mhr_mu" / fold)
    assert mu[key].shape[0] == 1 and routing not in mu  # averaged inventory, no routing
    poly = read_train_state(base / "multitask_poly/ckpt-last.pth")["model"]
    assert poly[routing].shape[1] == 1 and inv[routing].shape[1] == 2  # Poly: one head, MHR: 2 heads
    # an adapted fold is an ordinary run folder: its config's peft describes the adapted model
    from pointpeft.engine.evaluate import load_run_model, test_model

    for mode in ("mhr_z", "mhr_mu"):
        res = json.loads((base / mode / fold / "results.json").read_text())
        assert res["config"]["peft"]["mode"] == mode
        model, run_cfg = load_run_model(base / mode / fold, "best")
        assert test_model(model, run_cfg)["acc"] == pytest.approx(res["best"]["acc"])
    # a rerun reuses the inventories and the finished folds
    capsys.readouterr()
    stamp = (base / "multitask_mhr/results.json").stat().st_mtime_ns
    assert fewshot_main(argv) == 0
    assert "0 fold(s) trained, 4 finished before, 0 failed" in capsys.readouterr().out
    assert (base / "multitask_mhr/results.json").stat().st_mtime_ns == stamp


def test_folds_and_seeds_draw_different_episodes(tmp_path: Path) -> None:
    """Ten folds that were one episode ten times (or a seed that changed nothing) would average one draw; every
    (seed, fold) pair here gives its own classes or clouds, and the same pair gives the same episode."""
    from pointpeft.data import build_dataset, generate_fewshot_folds

    source = build_dataset({"type": "synthetic_shapes", "split": "train", "num_samples": 96, "npoints": 32})

    def episodes(seed: int) -> list[dict[str, Any]]:
        paths = generate_fewshot_folds(source, way=5, shot=2, folds=3, query_per_class=2, seed=seed,
                                       out_dir=tmp_path / f"s{seed}")
        return [safe_load(p) for p in paths]

    def signature(ep: dict[str, Any]) -> tuple:
        return tuple(sorted((t[2], t[0].tobytes()) for t in ep["train"] + ep["test"]))

    drawn = {(seed, fold): signature(ep) for seed in (0, 1) for fold, ep in enumerate(episodes(seed))}
    assert len(set(drawn.values())) == len(drawn) == 6, "two (seed, fold) pairs drew the same episode"
    classes = {k: {orig for orig, _ in sig} for k, sig in drawn.items()}
    assert len({frozenset(c) for c in classes.values()}) > 1  # not only the clouds: the classes vary too
    assert signature(episodes(0)[2]) == drawn[(0, 2)]  # and a pair is reproducible


def test_paired_differences_subtract_the_reference_fold_by_fold(tmp_path: Path) -> None:
    for name, accs in {"full": [90.0, 80.0, 70.0], "lora": [92.0, 80.0, 69.0], "vpt": [95.0, 85.0]}.items():
        for k, a in enumerate(accs):
            _write_fold(tmp_path / name / "5w10s" / f"fold{k}", a, a)
    rows = [summarize_method(tmp_path / n, n) for n in ("full", "lora", "vpt")]
    diffs = {d["name"]: d for d in paired_differences(rows, "full", [(5, 10), (10, 20)])}
    assert set(diffs) == {"lora", "vpt"}  # the reference is not paired with itself
    lora = diffs["lora"]["5way10shot"]
    assert lora["mean"] == pytest.approx(1 / 3) and lora["std"] == pytest.approx(np.std([2.0, 0.0, -1.0]))
    assert (lora["won"], lora["tied"], lora["lost"], lora["n"]) == (1, 1, 1, 3)
    assert diffs["vpt"]["5way10shot"]["n"] == 2  # only the folds both rows finished
    assert "10way20shot" not in diffs["lora"]  # a setting neither ran is absent, not zero
    assert paired_differences(rows, "missing", [(5, 10)]) == []
    table = format_paired_table(list(diffs.values()), "full", [(5, 10), (10, 20)])
    assert table.splitlines()[2] == "| lora | +0.3 ± 1.2 (1/1/1) | — |"


def test_mhr_heldout_classes_are_drawn_among_classes_every_setting_can_use() -> None:
    from pointpeft.fewshot.mhr_protocol import episode_eligible_classes, split_classes
    from pointpeft.fewshot.options import FewShotOptions, MhrProtocolOptions

    labels = np.repeat(np.arange(12), 30)
    mopts = MhrProtocolOptions(heldout_classes=3, num_tasks=3, classes_per_task=3, seed=4)
    order = np.random.default_rng(np.random.SeedSequence([4, 7919])).permutation(np.arange(12)).tolist()
    heldout, tasks = split_classes(labels, mopts)
    assert heldout == sorted(order[:3])  # every class eligible: the plain first-k draw of earlier ledgers
    assert tasks == [sorted(order[3 + 3 * i:6 + 3 * i]) for i in range(3)]

    # the real ModelNet40 case: a withheld slice leaves some classes 16 test clouds, below 20 queries
    query_labels = np.concatenate([np.repeat(np.arange(12), 20), np.repeat(np.arange(6), 5)])
    query_labels = query_labels[~np.isin(query_labels, order[:2]) | (np.arange(len(query_labels)) % 2 == 0)]
    opts = FewShotOptions(shot=[10, 20], query=20)
    eligible = episode_eligible_classes(labels, query_labels, opts)
    assert eligible == sorted(set(range(12)) - set(order[:2]))  # 10 or fewer test clouds left for two classes
    heldout, tasks = split_classes(labels, mopts, eligible)
    assert set(heldout) <= set(eligible) and len(heldout) == 3
    assert heldout == sorted([c for c in order if c in eligible][:3])
    assert not set(heldout) & {c for t in tasks for c in t} and all(len(t) == 3 for t in tasks)
    assert set(order[:2]) <= {c for t in tasks for c in t}  # a class too small to hold out still trains a task
    # queries from the rest of the training clouds: shot + query training clouds needed
    assert episode_eligible_classes(labels, None, FewShotOptions(shot=[10], query=20)) == list(range(12))
    assert episode_eligible_classes(labels, None, FewShotOptions(shot=[20], query=20)) == []
    with pytest.raises(ConfigError, match=r"fewshot\.mhr\.heldout_classes: 3 held-out classes, but only 2"):
        split_classes(labels, mopts, eligible[:2])
