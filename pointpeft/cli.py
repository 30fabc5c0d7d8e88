"""The installed console commands (``[project.scripts]`` in pyproject.toml). Each one is what the matching
``tools/*.py`` script runs, so ``pointpeft-train ARGS`` and ``python tools/train.py ARGS`` are the same program.
Imports are inside the functions: ``pointpeft-visualize --help`` should not wait for the training stack."""

from __future__ import annotations

from collections.abc import Sequence

PRETRAIN_DESCRIPTION = "Pretrain a Point-MAE masked autoencoder (train.task: mae_pretrain)."


def train_main(argv: Sequence[str] | None = None) -> int:
    """``pointpeft-train`` / ``tools/train.py``: fine-tune (or train) from a config, or resume a run."""
    from pointpeft.engine.launch import run

    return run(argv)


def pretrain_main(argv: Sequence[str] | None = None) -> int:
    """``pointpeft-pretrain`` / ``tools/pretrain.py``: the training entry with the pretraining description."""
    from pointpeft.engine.launch import run

    return run(argv, description=PRETRAIN_DESCRIPTION)


def test_main(argv: Sequence[str] | None = None) -> int:
    """``pointpeft-test`` / ``tools/test.py``: accuracy, confusion matrix and votes of a trained run."""
    from pointpeft.engine.evaluate import run

    return run(argv)


def fewshot_main(argv: Sequence[str] | None = None) -> int:
    """``pointpeft-fewshot`` / ``tools/fewshot.py``: N-way K-shot folds, mean ± std."""
    from pointpeft.fewshot.cli import main

    return main(argv)


def visualize_main(argv: Sequence[str] | None = None) -> int:
    """``pointpeft-visualize`` / ``tools/visualize.py``: clouds, patches, routing, reconstructions, run charts."""
    from pointpeft.viz.cli import main

    return main(None if argv is None else list(argv))
