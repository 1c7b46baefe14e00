"""`moshi.server.websocket.FrameHeaders`: follows frame boundaries through every length encoding and any split of the
bytes into chunks, and finds the first unmasked frame where it starts."""

from __future__ import annotations

import itertools

import pytest
from reliability.raw_websocket import OPCODE_PING, frame_bytes

from moshi.server.websocket import FrameHeaders

LENGTHS = [0, 1, 125, 126, 300, 65535, 65536, 70000]  # 7-bit, 16-bit and 64-bit length fields


def masked_stream() -> bytes:
    frames = [frame_bytes(bytes([length % 251]) * length) for length in LENGTHS]
    return b"".join(frames) + frame_bytes(b"", OPCODE_PING)


def feed_in_chunks(data: bytes, size: int) -> list[int | None]:
    """`first_unmasked` of each chunk, made absolute; stops at the first found."""
    headers, found = FrameHeaders(), []
    for start in range(0, len(data), size):
        offset = headers.first_unmasked(data[start: start + size])
        found.append(None if offset is None else start + offset)
        if offset is not None:
            break
    return found


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000, 1 << 20])
def test_masked_frames_pass_whatever_the_chunks(chunk: int) -> None:
    assert set(feed_in_chunks(masked_stream(), chunk)) == {None}


@pytest.mark.parametrize(("chunk", "length"), list(itertools.product([1, 2, 5, 4096, 1 << 20], [0, 200, 70000])))
def test_the_first_unmasked_frame_is_found_where_it_starts(chunk: int, length: int) -> None:
    before = masked_stream()
    data = before + frame_bytes(b"x" * length, masked=False) + frame_bytes(b"after")
    found = feed_in_chunks(data, chunk)
    start = len(before)  # the mask bit is in the header's second byte: when that byte opens a chunk, the header's
    told_at = start if start // chunk == (start + 1) // chunk else start + 1  # first byte has been passed on already
    assert found == [None] * (len(found) - 1) + [told_at]
