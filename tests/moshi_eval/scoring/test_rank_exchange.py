"""Gathering between ranks: the store exchange (threads standing in for ranks) and the byte reports they send."""

from __future__ import annotations

import threading

import numpy as np
import torch

from moshi_eval.scoring.data import Skip
from moshi_eval.scoring.run import DistributedContext, RankReport, SequenceLosses


def run_ranks(world_size: int, work) -> list:
    """`work(context)` on `world_size` threads sharing one in-memory store; their return values in rank order."""
    store = torch.distributed.HashStore()
    results: list = [None] * world_size
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            results[rank] = work(DistributedContext(rank=rank, world_size=world_size, store=store))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(error)

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a rank is still waiting"
    if errors:
        raise errors[0]
    return results


def test_all_gather_bytes_gives_every_rank_all_payloads_in_rank_order():
    def work(context: DistributedContext) -> list[list[bytes]]:
        first = context.all_gather_bytes(f"rank {context.rank}".encode())
        context.barrier()
        second = context.all_gather_bytes(bytes([context.rank]) * (context.rank + 1))
        return [first, second]

    results = run_ranks(3, work)
    expected_first = [b"rank 0", b"rank 1", b"rank 2"]
    expected_second = [b"\x00", b"\x01\x01", b"\x02\x02\x02"]
    assert results == [[expected_first, expected_second]] * 3


def test_single_process_gathers_its_own_payload_without_a_store():
    context = DistributedContext()
    assert context.all_gather_bytes(b"alone") == [b"alone"]
    context.barrier()
    assert context.shard([1, 2, 3]) == [1, 2, 3]
    assert DistributedContext(rank=1, world_size=2).shard([0, 1, 2, 3, 4]) == [1, 3]


def test_rank_report_round_trips_losses_skips_and_counters():
    losses = np.array([[np.nan, 1.5], [2.25, 0.125], [3.0, np.nan]], dtype=np.float32)
    report = RankReport(
        finished={"b": SequenceLosses("b", losses, ["x/b.flac"]),
                  "a": SequenceLosses("a", np.zeros((0, 2), dtype=np.float32), [])},
        skips=[Skip("c.flac", "sequence skipped: unreadable")], scored_frames=3, resumed=1,
        timing={"encode_seconds": 0.5, "score_seconds": 2.0, "codes_cache_hits": 4})
    back = RankReport.from_bytes(report.to_bytes())
    assert list(back.finished) == ["b", "a"]
    np.testing.assert_array_equal(back.finished["b"].codebook_losses, losses)
    assert back.finished["b"].files == ["x/b.flac"]
    assert back.finished["a"].codebook_losses.shape == (0, 2)
    assert back.skips == report.skips
    assert (back.scored_frames, back.resumed, back.timing) == (3, 1, report.timing)


def test_empty_rank_report_round_trips():
    empty = RankReport(finished={}, skips=[], scored_frames=0, resumed=0, timing={})
    back = RankReport.from_bytes(empty.to_bytes())
    assert (back.finished, back.skips, back.scored_frames, back.resumed, back.timing) == ({}, [], 0, 0, {})
