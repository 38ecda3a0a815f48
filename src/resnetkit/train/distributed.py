"""Distributed data parallel under ``torchrun``: gloo on CPU, NCCL on CUDA.

``torchrun --nproc-per-node N -m resnetkit.cli.main train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them. Every rank runs the
same loop on its share of each global batch; rank 0 alone writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from resnetkit.errors import ConfigError

__all__ = ["DistEnv", "all_reduce_sum", "init_distributed", "shutdown_distributed", "wrap_ddp"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group torchrun describes in the environment (no-op when alone)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    env = DistEnv(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return env


def shutdown_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, env: DistEnv, device: torch.device, sync_bn: bool) -> nn.Module:
    """Wrap ``model`` for DDP (optionally converting BatchNorm to SyncBatchNorm)."""
    if not env.enabled:
        return model
    if sync_bn and device.type != "cuda":
        raise ConfigError("sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over all ranks (returns it unchanged when alone)."""
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
