"""Running under `torchrun`: sequences are sharded across ranks and the results gathered with torch.distributed.

The process group uses the gloo backend whatever the device, since only small CPU arrays (per-frame losses) travel.
Rank r scores sequences r, r + N, r + 2N, ...; gathering and sorting by sequence id gives exactly what one process
computes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list[T]) -> list[T]:
        return items[self.rank:: self.world_size]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (a one-element list when not distributed)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed() -> DistributedContext:
    """The context from torchrun's environment variables, starting a gloo process group when there are several ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed() -> None:
    """Tear down the process group started by `init_distributed` (no-op when there is none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def default_device(context: DistributedContext) -> str:
    """`cuda:<local rank>` when GPUs are present, else `cpu`."""
    if torch.cuda.is_available():
        return f"cuda:{context.local_rank % torch.cuda.device_count()}"
    return "cpu"
