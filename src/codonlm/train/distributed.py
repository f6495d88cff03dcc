"""torchrun / DDP: process group set-up from the environment torchrun provides."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_rank() -> bool:
    """Rank 0 (or no torchrun at all): the one process that writes the run folder and logs."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_type: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_max(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The largest value on any rank, on every rank (e.g. a stop signal one rank received)."""
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def shutdown(info: DistInfo) -> None:
    """Barrier first: rank 0 hosts the rendezvous store, and a rank still talking to it when rank 0
    exits is aborted by gloo (seen as a flaky SIGABRT of rank 1)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def agree_on(make, device_type: str):
    """The value rank 0 computes with `make()`, on every rank (e.g. the run id rank 0 claims)."""
    info = init_distributed(device_type)
    if not info.enabled:
        return make()
    box = [make() if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
