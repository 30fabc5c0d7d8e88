"""Tiny, fast run configs for the engine tests (synthetic data, point_mae_tiny, a few steps)."""

from __future__ import annotations

from pathlib import Path

from pointpeft.config import load_config

REPO = Path(__file__).resolve().parents[1]
SYNTH_ADAPTERX = REPO / "cfgs" / "finetune" / "synthetic" / "adapterx.yaml"

TINY = ["model.type=point_mae_tiny", "data.train.num_samples=48", "data.val.num_samples=24",
        "data.batch_size=8", "train.max_steps_per_epoch=3", "train.epochs=3", "train.amp=fp32",
        "train.progress=off", "train.threads=1", "scheduler.warmup_epochs=1"]
#: a loss that is a mean over samples (DDP equality needs it): no dropout/drop-path, a BatchNorm-free head, no
#: augmentation, and no Switch balance loss (a product of two batch means: per-rank values do not average to it)
#: what makes 2 ranks x B/2 compute exactly what 1 process x B does: no random draws, no per-batch statistics (the
#: point_bert head has no BatchNorm; frozen_bn=eval keeps the tokenizer's BatchNorms on their running statistics)
DETERMINISTIC_FWD = ["model.drop_path_rate=0.0", "model.head=point_bert", "model.head_dropout=0.0",
                     "data.train.transforms=[]", "peft.balance_loss_weight=0.0", "peft.frozen_bn=eval"]


def tiny_config(config: Path = SYNTH_ADAPTERX, extra: list[str] = ()):  # noqa: ANN201 - Config
    return load_config(config, [*TINY, *extra])
