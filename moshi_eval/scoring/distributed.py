"""Running under `torchrun`: sequences are sharded across ranks and each rank's results gathered through the launcher's
key-value store.

Rank r scores sequences r, r + N, r + 2N, ...; every rank then publishes what it finished as bytes, reads every other
rank's, and sorting by sequence id gives exactly what one process computes.

No collective backend (gloo, NCCL) is started. The only traffic is one small report per rank, sent once, and ranks
can finish hours apart on real chapters, longer than a collective's default timeout of 30 minutes: the store's `wait`
takes an explicit deadline instead. (A gloo process group torn down at exit has also been seen to abort a rank with
`terminate called without an active exception` on torch 2.13.)
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
from collections.abc import Iterator
from typing import Any

import torch

GATHER_TIMEOUT = datetime.timedelta(days=7)
_KEY_PREFIX = "moshi_eval.librilight"


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """This process's place among the ranks; `store` is shared by all ranks (None in a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    store: torch.distributed.Store | None = None
    rounds: Iterator[int] = dataclasses.field(default_factory=itertools.count, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank:: self.world_size]

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's `payload`, in rank order. Every rank must call it the same number of times."""
        if not self.enabled:
            return [payload]
        round_key = f"gather{next(self.rounds)}"
        self.store.set(f"{round_key}/{self.rank}", payload)
        keys = [f"{round_key}/{rank}" for rank in range(self.world_size)]
        self.store.wait(keys, GATHER_TIMEOUT)
        parts = [bytes(self.store.get(key)) for key in keys]
        self._meet(f"{round_key}/read")
        return parts

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.enabled:
            self._meet(f"barrier{next(self.rounds)}")

    def _meet(self, key: str) -> None:
        if self.store.add(f"{key}/arrived", 1) == self.world_size:
            self.store.set(f"{key}/all", b"1")
        self.store.wait([f"{key}/all"], GATHER_TIMEOUT)


_context: DistributedContext | None = None


def init_distributed() -> DistributedContext:
    """The context from torchrun's environment variables (the same object on every call until `shutdown_distributed`).

    With several ranks it connects to the launcher's store (torchrun's agent store, or one hosted by rank 0 when the
    launcher only sets MASTER_ADDR/MASTER_PORT), under a prefix that is new for each run and restart.
    """
    global _context
    if _context is None:
        _context = _context_from_environment()
    return _context


def _context_from_environment() -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    store, _, _ = next(torch.distributed.rendezvous("env://"))
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = torch.distributed.PrefixStore(f"{_KEY_PREFIX}/{run}/{attempt}", store)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, store=prefixed)


def shutdown_distributed() -> None:
    """Forget the context: every rank has read what it needs once `all_gather_bytes` or `barrier` returned."""
    global _context
    _context = None
