"""The ``train:`` and ``data:`` sections as checked dataclasses (unknown keys are errors naming file and key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pointpeft.engine.amp import AMP_MODES


@dataclass
class TrainOptions:
    """The ``train:`` section."""

    task: str = "classification"  # registry TASKS: classification | mae_pretrain
    epochs: int = 300
    amp: str = "auto"  # auto | fp32 | bf16 | fp16: auto = bf16 only where the hardware has it natively
    device: str = "auto"  # auto | cpu | cuda
    grad_clip: float | None = 10.0  # max gradient norm over the trainable parameters; null = off
    label_smoothing: float = 0.0
    eval_every: int = 1  # evaluate every n epochs (and always after the last)
    save_every: int = 1  # write the resumable ckpt-last.pth every n epochs (and always after the last)
    max_steps_per_epoch: int | None = None  # cap steps per epoch (smoke tests, demos); null = the whole loader
    log_every: int = 20  # TensorBoard scalars every n steps
    threads: int | None = None  # torch.set_num_threads; null = torch's default
    deterministic: bool = True  # deterministic algorithms where torch offers them
    progress: str | bool = "auto"  # auto (tqdm on a terminal, off in CI/logs) | on | off

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("epochs", "eval_every", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if isinstance(self.progress, bool):  # YAML 1.1 reads on/off as booleans
            self.progress = "on" if self.progress else "off"
        if self.progress not in ("auto", "on", "off"):
            raise ValueError(f"progress must be auto, on or off, got {self.progress!r}")


@dataclass
class DataOptions:
    """The ``data:`` section: data set nodes (``type`` + keys of the registered data set) and loader settings."""

    train: dict[str, Any] | None = None
    val: dict[str, Any] | None = None  # evaluated every eval_every epochs; also the default test set
    test: dict[str, Any] | None = None  # tools/test.py's set when given
    batch_size: int = 32
    val_batch_size: int | None = None  # default: batch_size
    num_workers: int = 0
    drop_last: str | bool = "auto"  # auto: drop only a last training batch of one (BatchNorm cannot train on it)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.drop_last not in ("auto", True, False):
            raise ValueError(f"drop_last must be auto, true or false, got {self.drop_last!r}")
