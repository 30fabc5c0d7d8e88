"""The installed console commands exist and start: each ``pointpeft-*`` of pyproject.toml, as installed, resolves
to a function of pointpeft.cli, and the installed script answers ``--help`` with its own usage line."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"pointpeft-train": "train_main", "pointpeft-test": "test_main", "pointpeft-pretrain": "pretrain_main",
            "pointpeft-fewshot": "fewshot_main", "pointpeft-visualize": "visualize_main"}


def test_the_installed_package_declares_the_five_commands() -> None:
    eps = importlib.metadata.distribution("pointpeft").entry_points
    scripts = {ep.name: ep.value for ep in eps if ep.group == "console_scripts"}
    assert scripts == {name: f"pointpeft.cli:{fn}" for name, fn in COMMANDS.items()}
    cli = importlib.import_module("pointpeft.cli")
    for fn in COMMANDS.values():
        assert callable(getattr(cli, fn))


def test_every_installed_command_answers_help() -> None:
    bindir = Path(sys.executable).parent
    missing = [n for n in COMMANDS if not (bindir / n).is_file()]
    assert not missing, f"{missing} not in {bindir}: run `{sys.executable} -m pip install --no-deps -e .`"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {n: subprocess.Popen([str(bindir / n), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for n in COMMANDS}  # in parallel: each one imports torch
    helps = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name} --help: {err[-2000:]}"
        assert out.startswith(f"usage: {name}"), out[:200]
        helps[name] = " ".join(out.split())
    # the same code as the tools: the pretraining command has the pretraining description, training has its own
    from pointpeft.cli import PRETRAIN_DESCRIPTION

    assert " ".join(PRETRAIN_DESCRIPTION.split()) in helps["pointpeft-pretrain"]
    assert "Fine-tune a pretrained transformer." in helps["pointpeft-train"]


def test_quiet_silences_the_console_not_the_run_log(tmp_path: Path, capfd) -> None:  # noqa: ANN001
    """``--quiet`` is warnings only on the console; the run folder's train.log still has every line."""
    from engine_cases import SYNTH_ADAPTERX, TINY

    from pointpeft.engine.launch import run

    runs = tmp_path / "s"
    short = ["train.epochs=1", "train.max_steps_per_epoch=1", "data.val.num_samples=8", "scheduler.warmup_epochs=0"]
    assert run(["--config", str(SYNTH_ADAPTERX), "--run-dir", str(runs), "--quiet", "--seeds", "0", "1", *TINY,
                *short]) == 0
    console = capfd.readouterr().err
    assert "run folder:" not in console
    first, second = (runs / "seed0" / "train.log").read_text(), (runs / "seed1" / "train.log").read_text()
    assert "run folder:" in first and "done: best" in first
    assert str(runs / "seed1") not in first  # each seed's log has its own run only
    assert "run folder:" in second and "done: best" in second


def test_sigterm_stops_a_guarded_run_as_ctrl_c_does_and_the_old_handler_comes_back() -> None:
    import logging
    import signal

    from pointpeft.utils.cli import EXIT_INTERRUPTED, run_guarded

    before = signal.getsignal(signal.SIGTERM)
    reached = []

    def work() -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` sends a background sweep
        reached.append("after the signal")
        return "done"

    result, rc = run_guarded(work, logging.getLogger("test"), "stopped")
    assert (result, rc, reached) == (None, EXIT_INTERRUPTED, [])
    assert signal.getsignal(signal.SIGTERM) is before
    assert run_guarded(lambda: "done", logging.getLogger("test")) == ("done", 0)
