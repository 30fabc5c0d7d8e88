"""Process-group set-up for ``torchrun``: gloo on CPU, nccl on GPU; rank 0 alone logs, evaluates and writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pointpeft.utils.misc import get_logger

log = get_logger("engine.dist")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        from pointpeft.errors import ConfigError

        raise ConfigError("train.device is 'cuda' but CUDA is not available on this machine")
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("process group: %s, rank %d of %d", backend, rank, world)
    return DistInfo(rank, world, local), dev


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the run folder it chose)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def global_means(sums: dict[str, float], count: int, info: DistInfo, device: torch.device) -> dict[str, float]:
    """Sample-weighted means over every rank's batches (the logged training loss/accuracy of the global batch, as
    Point-MAE's runner reduces them); ``sums`` holds value x batch size per key, the same keys on every rank."""
    keys = sorted(sums)
    if info.enabled and dist.is_initialized():
        t = torch.tensor([*(sums[k] for k in keys), float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        vals, count = t[:-1].tolist(), int(t[-1].item())
    else:
        vals = [sums[k] for k in keys]
    return {k: v / max(count, 1) for k, v in zip(keys, vals)}


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
