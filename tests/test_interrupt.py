"""A run SIGKILLed while it writes a checkpoint keeps the previous checkpoint, and --resume finishes the same run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import torch
from engine_cases import REPO, SYNTH_ADAPTERX, TINY

from pointpeft.engine import read_train_state
from pointpeft.engine.launch import run as train_main
from pointpeft.engine.train_state import LAST_NAME

KILLED_AT_EPOCH = 2

CHILD = textwrap.dedent(f"""
    import sys, time, torch
    from pointpeft.engine import train_state as ck
    real_save = torch.save

    def save_then_hang(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == ck.STATE_FORMAT and obj["epoch"] == {KILLED_AT_EPOCH}:
            with open(f, "wb") as fh:  # half a checkpoint is on disk when the kill comes
                fh.write(b"PK partial checkpoint")
                fh.flush()
            print("IN_SAVE", flush=True)
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save_then_hang
    from pointpeft.engine.launch import run
    sys.exit(run(sys.argv[1:]))
""")


def _args(run_dir) -> list[str]:
    return ["--config", str(SYNTH_ADAPTERX), "--run-dir", str(run_dir), "--quiet", *TINY]


def test_sigkill_during_checkpoint_write_then_resume(tmp_path):
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *_args(killed)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "IN_SAVE", (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert list(killed.glob(f".{LAST_NAME}.*.tmp")), "the interrupted write went to a temp file"
    state = read_train_state(killed / LAST_NAME)  # the previous checkpoint is intact and readable
    assert state["epoch"] == KILLED_AT_EPOCH - 1

    assert train_main(["--resume", str(killed), "--quiet"]) == 0
    assert not list(killed.glob(f".{LAST_NAME}.*.tmp")), "resume clears the dead temp file"
    straight = tmp_path / "straight"
    assert train_main(_args(straight)) == 0
    a = read_train_state(straight / LAST_NAME)
    b = read_train_state(killed / LAST_NAME)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
