"""`/api/chat` end to end on the demo model (random weights, CPU): handshake, audio and text, fresh state per
conversation, disconnects, busy model, malformed messages."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from aiohttp import WSMsgType
from chat_helpers import (
    FRAME,
    Reply,
    TokenRecorder,
    chat_server,
    converse,
    expect_handshake,
    finished_conversations,
    load_demo_model,
    opus_pages,
    read_until_audio,
    wav_frames,
)

from moshi.server.served_model import ServedModel

FRAMES = 24  # more than the TTT mini-batch (16 tokens), so the fast weights change during a conversation


@pytest.fixture(scope="module")
def model(demo_checkpoint: Path) -> ServedModel:
    return load_demo_model(demo_checkpoint)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return opus_pages(wav_frames(tmp_path_factory.mktemp("wav"), FRAMES * FRAME / 24000, seed=1))


def test_handshake_then_audio_and_text(model: ServedModel, speech: list[bytes]) -> None:
    async def scenario() -> tuple[Reply, list]:
        async with chat_server(model) as (client, app):
            reply = await converse(client, speech)
            return reply, await finished_conversations(app, 1)

    reply, finished = asyncio.run(scenario())
    assert len(reply.audio) == FRAMES - 1  # the first step only fills the delayed streams
    assert reply.decoded_audio().shape == ((FRAMES - 1) * FRAME,)
    assert np.abs(reply.decoded_audio()).max() > 0
    assert reply.text and all(piece for piece in reply.text)
    kinds = [kind for kind, _ in reply.messages]
    assert kinds[0] == 1 and (2, 2) not in itertools.pairwise(kinds)  # each text piece follows its frame's audio
    (stats,) = finished
    assert (stats.frames_in, stats.frames_out, stats.dropped_in, stats.dropped_out) == (FRAMES, FRAMES - 1, 0, 0)
    assert stats.text_pieces == len(reply.text) and len(stats.latency_ms) == FRAMES - 1
    (talk,) = stats.talk.figures()  # what the model said, every reply frame counted; a text piece per non-PAD token
    assert stats.talk.frames == FRAMES - 1
    assert talk.overall["pad_fraction"] == pytest.approx(1 - len(reply.text) / (FRAMES - 1))


def test_every_conversation_starts_fresh(demo_checkpoint: Path, speech: list[bytes], tmp_path: Path) -> None:
    """Same audio, same reply: the sampled tokens of two conversations in a row are equal (the reply audio only to
    float rounding: after a reset the attention reads its masked empty slots too, so sums change order)."""
    recorder = TokenRecorder()
    model = load_demo_model(demo_checkpoint, recorder=recorder)
    other_speech = opus_pages(wav_frames(tmp_path, FRAMES * FRAME / 24000, seed=2))

    async def scenario() -> list[tuple[Reply, torch.Tensor]]:
        async with chat_server(model) as (client, _):
            return [(await converse(client, pages), recorder.take()) for pages in (speech, speech, other_speech)]

    (first, first_tokens), (second, second_tokens), (other, other_tokens) = asyncio.run(scenario())
    assert first_tokens.shape == (FRAMES, 9)
    assert torch.equal(second_tokens, first_tokens)
    assert second.text == first.text and len(second.audio) == len(first.audio)
    assert not torch.equal(other_tokens, first_tokens) and other.text != first.text  # the user's audio is heard
    half = FRAMES // 2
    assert not torch.equal(first_tokens[:half], first_tokens[half: 2 * half])  # the reply changes over time


def test_a_client_leaving_mid_sentence_frees_the_model(model: ServedModel, speech: list[bytes]) -> None:
    async def scenario() -> tuple[Reply, list]:
        async with chat_server(model, busy_wait_s=5.0) as (client, app):
            leaving = await client.ws_connect("/api/chat")
            await expect_handshake(leaving)
            for page in speech[:8]:
                await leaving.send_bytes(b"\x01" + page)
            await read_until_audio(leaving, Reply(), 2)
            leaving._response.connection.transport.abort()  # no close handshake: the network just goes away
            reply = await converse(client, speech[:6])
            return reply, await finished_conversations(app, 2)

    reply, finished = asyncio.run(scenario())
    assert len(reply.audio) == 5
    assert len(finished) == 2 and 2 <= finished[0].frames_in <= 8


def test_a_second_client_waits_then_hears_the_model_is_busy(model: ServedModel, speech: list[bytes]) -> None:
    async def scenario() -> tuple[object, object, Reply]:
        async with chat_server(model, busy_wait_s=0.3) as (client, _):
            holder = await client.ws_connect("/api/chat")
            await expect_handshake(holder)
            turned_away = await client.ws_connect("/api/chat")
            error = await turned_away.receive(timeout=5)
            closing = await turned_away.receive(timeout=5)
            await holder.close()
            return error, closing, await converse(client, speech[:3])

    error, closing, later = asyncio.run(scenario())
    assert error.data[:1] == b"\x05" and b"busy" in error.data
    assert closing.type == WSMsgType.CLOSE and closing.data == 1013 and "busy" in closing.extra
    assert len(later.audio) == 2


@pytest.mark.parametrize(("message", "close_code", "reason"), [
    (b"\x09hello", 1003, "unknown message kind 0x09"),
    (b"\x02hello", 1003, "unknown message kind 0x02"),
    (b"", 1003, "empty message"),
    (b"\x01" + b"not an ogg stream" * 4, 1007, "bad Ogg Opus audio"),
    ("a text frame", 1003, "text message"),
])
def test_a_malformed_message_closes_that_connection_only(model: ServedModel, speech: list[bytes], message: bytes | str,
                                                         close_code: int, reason: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list, Reply]:
        async with chat_server(model) as (client, _):
            async with client.ws_connect("/api/chat") as ws:
                await expect_handshake(ws)
                await ws.send_bytes(b"\x01" + speech[0])
                await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))
                received = [await ws.receive(timeout=5), await ws.receive(timeout=5)]
            return received, await converse(client, speech[:3])

    with caplog.at_level(logging.WARNING, logger="moshi.server"):
        (error, closing), later = asyncio.run(scenario())
    assert error.data[:1] == b"\x05" and reason in error.data.decode()
    assert closing.type == WSMsgType.CLOSE and closing.data == close_code and reason in closing.extra
    assert any(reason in record.getMessage() for record in caplog.records)
    assert len(later.audio) == 2  # the server goes on serving
